"""Evaluate an image classifier the 🤗 way: ``evaluate.evaluator("image-classification")`` over a ``datasets`` split.

:func:`evaluate_pipeline` runs transformers' ``image-classification`` pipeline (with the model's
own image processor) over a ``datasets.Dataset`` and scores top-1 / top-5 with the packaged
:mod:`rpg_hf.metrics` top-k accuracy, which loads offline.  ``strategy="bootstrap"`` adds
confidence intervals (scipy), what a reported number such as an ObjectNet or Fashion-MNIST
accuracy should carry.

Where each evaluation lives: training and the recipes' per-epoch evaluation use
``rpg_hf.train.evaluate`` (torchmetrics on batched tensors, gathered across processes by
Accelerate — the one evaluation of the training loop); this module is for a finished model
evaluated as users evaluate any Hub classifier, on a ``datasets`` split, one process.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rpg_hf.metrics import TOPK_ACCURACY

__all__ = ["bootstrap_accuracy_interval", "evaluate_pipeline", "make_pipeline", "topk_evaluator"]


def _topk_hits(predictions, references, k: int) -> np.ndarray:
    return np.array([float(r in list(np.atleast_1d(p))[:k]) for p, r in zip(predictions, references, strict=True)])


def _interval(hits: np.ndarray, confidence_level: float, n_resamples: int, random_state) -> dict[str, Any]:
    """scipy's bootstrap interval of the mean of per-example hit indicators (= top-k accuracy)."""
    from scipy.stats import bootstrap

    bs = bootstrap((hits,), np.mean, vectorized=True, confidence_level=confidence_level, n_resamples=n_resamples,
                   random_state=random_state)
    return {"confidence_interval": (float(bs.confidence_interval.low), float(bs.confidence_interval.high)),
            "standard_error": float(bs.standard_error)}


def bootstrap_accuracy_interval(correct: int, total: int, *, confidence_level: float = 0.95,
                                n_resamples: int = 9999, random_state: int | None = None) -> dict[str, Any]:
    """The bootstrap interval :func:`evaluate_pipeline` reports, from the counts alone.

    Accuracy is the mean of 0/1 hits, so resampling examples depends only on how many hit: the
    hits vector rebuilt from ``correct`` of ``total`` gives the same interval as the per-example
    one — which is how the ObjectNet recipe, whose evaluation keeps counts, quotes intervals.
    """
    if not 0 <= correct <= total or total < 1:
        raise ValueError(f"need 0 <= correct <= total and total >= 1, got {correct} of {total}")
    hits = np.zeros(total)
    hits[:correct] = 1.0
    return _interval(hits, confidence_level, n_resamples, random_state)


def _evaluator_class():
    from evaluate.evaluator import ImageClassificationEvaluator

    class TopKImageClassificationEvaluator(ImageClassificationEvaluator):
        """``evaluate``'s image-classification evaluator, passing the ranked top-k labels to the metric.

        The stock evaluator keeps only each example's best label, so it can score top-1 alone.
        Bootstrap intervals resample examples as the stock one does (scipy's ``bootstrap``,
        paired), on the per-example hit indicators, whose mean *is* top-k accuracy: the same
        statistic in one vectorised call instead of one metric call per resample.
        """

        def __init__(self, ks: Sequence[int] = (1, 5)):
            super().__init__()
            self.ks = tuple(ks)
            self.PIPELINE_KWARGS = {"top_k": max(self.ks)}
            self.METRIC_KWARGS = {"k": self.ks}

        def prepare_pipeline(self, model_or_pipeline, tokenizer=None, feature_extractor=None, device=None):
            # evaluate 0.4.6 tests isinstance(..., transformers.TFPreTrainedModel), which transformers 5
            # no longer has; evaluate_pipeline always hands over a built pipeline
            if getattr(model_or_pipeline, "task", None) != self.task:
                raise ValueError(f"expected an {self.task!r} pipeline, got {type(model_or_pipeline).__name__}")
            return model_or_pipeline

        def predictions_processor(self, predictions, label_mapping):
            ranked = [[p["label"] for p in sorted(pred, key=lambda p: -p["score"])] for pred in predictions]
            if label_mapping is not None:
                ranked = [[label_mapping[label] for label in labels] for labels in ranked]
            return {"predictions": ranked}

        def _compute_confidence_interval(self, metric, metric_inputs, metric_keys, confidence_level=0.95,
                                         n_resamples=9999, random_state=None):
            return {key: _interval(_topk_hits(metric_inputs["predictions"], metric_inputs["references"],
                                              int(key[3:])), confidence_level, n_resamples, random_state)
                    for key in metric_keys}

    return TopKImageClassificationEvaluator


def topk_evaluator(ks: Sequence[int] = (1, 5)):
    """An ``evaluate`` image-classification evaluator that scores the top-``max(ks)`` ranked labels
    (built on first use: ``evaluate`` is imported lazily)."""
    return _evaluator_class()(ks)


def make_pipeline(model_or_path: Any, *, device: Any = None, batch_size: int | None = None, **kwargs: Any):
    """transformers' ``image-classification`` pipeline for a model object or a folder / Hub id.

    A model object gets its own image processor (``RPGPreTrainedModel.image_processor()``); a
    folder's ``preprocessor_config.json`` is read by the pipeline itself.
    """
    from transformers import pipeline

    if isinstance(model_or_path, str | os.PathLike):
        return pipeline("image-classification", model=str(model_or_path), device=device, batch_size=batch_size,
                        **kwargs)
    if "image_processor" not in kwargs and hasattr(model_or_path, "image_processor"):
        kwargs["image_processor"] = model_or_path.image_processor()
    return pipeline("image-classification", model=model_or_path, device=device, batch_size=batch_size, **kwargs)


def evaluate_pipeline(
    model_or_path: Any,
    dataset: Any,
    *,
    ks: Sequence[int] = (1, 5),
    input_column: str = "image",
    label_column: str = "label",
    label_mapping: Mapping[str, int] | None = None,
    strategy: str = "simple",
    confidence_level: float = 0.95,
    n_resamples: int = 9999,
    random_state: int | None = None,
    device: Any = None,
    batch_size: int | None = None,
) -> dict[str, Any]:
    """Top-k accuracy of a classifier on a ``datasets`` split through ``evaluate``'s evaluator.

    ``model_or_path``: a transformers image classifier (an RPG model or any other), a folder or a
    Hub id, or a ready ``image-classification`` pipeline.  ``dataset``: a ``datasets.Dataset``
    with an image column and an integer label column.  ``label_mapping`` maps the model's label
    names to the dataset's ids (default: the model's ``label2id``, right when the model was
    trained on this dataset's classes).

    Returns ``{"top1": ..., "top5": ..., "top1_correct": n, "top5_correct": n, "total": n}`` plus
    ``evaluate``'s timing keys; accuracies are fractions.  With ``strategy="bootstrap"`` each
    ``top{k}`` is ``{"score", "confidence_interval": (low, high), "standard_error"}`` instead.
    """
    from transformers import Pipeline

    pipe = model_or_path if isinstance(model_or_path, Pipeline) else make_pipeline(
        model_or_path, device=device, batch_size=batch_size)
    if label_mapping is None:
        label_mapping = {str(k): int(v) for k, v in pipe.model.config.label2id.items()}
    evaluator = topk_evaluator(ks)
    import evaluate

    metric = evaluate.load(TOPK_ACCURACY)
    counts: dict[str, int] = {}
    processor = evaluator.predictions_processor

    def keep_counts(predictions, mapping):  # exact counts beside the fractions (and their intervals)
        out = processor(predictions, mapping)
        references = dataset[label_column]
        for k in evaluator.ks:
            counts[f"top{k}_correct"] = int(_topk_hits(out["predictions"], references, k).sum())
        counts["total"] = len(references)
        return out

    evaluator.predictions_processor = keep_counts
    result = evaluator.compute(model_or_pipeline=pipe, data=dataset, metric=metric, strategy=strategy,
                               confidence_level=confidence_level, n_resamples=n_resamples,
                               random_state=random_state, input_column=input_column, label_column=label_column,
                               label_mapping=dict(label_mapping))
    return {**result, **counts}
