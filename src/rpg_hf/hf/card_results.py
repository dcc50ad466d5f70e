"""Evaluation results of a model card: :class:`EvalEntry` (one metric on one split, the card's
``model-index`` entry as huggingface_hub's ``EvalResult``) and :func:`results_from_json`, which reads
the results JSON the recipes and the demo write.  Used by :mod:`rpg_hf.hf.cards`.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult

__all__ = ["KNOWN_DATASETS", "EvalEntry", "eval_key", "merge_results", "results_from_json", "to_entries"]

TASK_NAMES = {"image-classification": "Image Classification"}

# dataset id (lower case) -> (dataset type written to model-index, display name)
KNOWN_DATASETS: dict[str, tuple[str, str]] = {
    "fashion_mnist": ("fashion_mnist", "Fashion-MNIST"),
    "fashion-mnist": ("fashion_mnist", "Fashion-MNIST"),
    "zalando-datasets/fashion_mnist": ("zalando-datasets/fashion_mnist", "Fashion-MNIST"),
    "imagenet-1k": ("imagenet-1k", "ImageNet-1k"),
    "ilsvrc/imagenet-1k": ("ILSVRC/imagenet-1k", "ImageNet-1k"),
    "imagenet": ("imagenet-1k", "ImageNet-1k"),
    "objectnet": ("objectnet", "ObjectNet"),
    "cifar10": ("cifar10", "CIFAR-10"),
    "cifar100": ("cifar100", "CIFAR-100"),
}


def _norm(s: Any) -> str:
    return str(s or "").strip().lower()


@dataclass
class EvalEntry:
    """One metric on one dataset split.  ``value`` is in percent for accuracies (91.2, not 0.912)."""

    dataset_name: str  # display name, e.g. "Fashion-MNIST"
    dataset_type: str  # Hub dataset id, e.g. "fashion_mnist"
    split: str  # e.g. "test", "validation"
    metric_type: str  # e.g. "accuracy"
    metric_name: str  # e.g. "Top-1 accuracy"
    value: float
    task_type: str = "image-classification"
    config: str | None = None  # dataset config, e.g. "imagenet-overlap-113"

    def to_eval_result(self) -> EvalResult:
        return EvalResult(
            task_type=self.task_type,
            task_name=TASK_NAMES.get(self.task_type),
            dataset_type=self.dataset_type,
            dataset_name=self.dataset_name,
            dataset_split=self.split,
            dataset_config=self.config,
            metric_type=self.metric_type,
            metric_name=self.metric_name,
            metric_value=float(self.value),
        )

    @classmethod
    def from_eval_result(cls, result: EvalResult) -> EvalEntry:
        return cls(
            dataset_name=result.dataset_name,
            dataset_type=result.dataset_type,
            split=result.dataset_split or "",
            metric_type=result.metric_type,
            metric_name=result.metric_name or result.metric_type,
            value=float(result.metric_value),
            task_type=result.task_type,
            config=result.dataset_config,
        )


def eval_key(result: EvalResult) -> tuple[str, str, str]:
    """Identity used to replace results: (dataset_type, split, metric_name), case-insensitive."""
    return (_norm(result.dataset_type), _norm(result.dataset_split), _norm(result.metric_name or result.metric_type))


def _dataset_ids(dataset: str) -> tuple[str, str]:
    known = KNOWN_DATASETS.get(dataset.strip().lower())
    return known if known else (dataset, dataset)


def _record_entries(record: Mapping[str, Any], unit: str | None, where: str) -> list[EvalEntry]:
    dataset = record.get("dataset_type") or record.get("dataset")
    if not dataset:
        raise ValueError(f"{where}: a results record needs a 'dataset' (or 'dataset_type') key")
    dataset_type, dataset_name = _dataset_ids(str(dataset))
    if record.get("dataset_type"):
        dataset_type = str(record["dataset_type"])
    dataset_name = str(record.get("dataset_name") or dataset_name)
    split = str(record.get("split") or "test")
    config = record.get("config")
    if config is None and dataset_type == "objectnet" and record.get("classes"):
        config = f"imagenet-overlap-{record['classes']}"  # the ObjectNet evaluation's ``classes``: 113
    task_type = str(record.get("task_type") or "image-classification")
    unit = (unit or record.get("unit") or "percent").lower()
    if unit not in ("percent", "fraction"):
        raise ValueError(f"{where}: unit must be 'percent' or 'fraction', got {unit!r}")
    scale = 100.0 if unit == "fraction" else 1.0

    metrics: list[tuple[str, str, Any]] = []
    for key, value in record.items():
        m = re.fullmatch(r"top(\d+)", str(key))
        if m:
            metrics.append(("accuracy", f"Top-{int(m.group(1))} accuracy", value))
    metrics.sort(key=lambda t: int(re.search(r"\d+", t[1]).group()))  # type: ignore[union-attr]
    for extra in record.get("metrics") or []:
        if not isinstance(extra, Mapping) or "value" not in extra or "type" not in extra:
            raise ValueError(f"{where}: entries of 'metrics' need 'type' and 'value' (and optionally 'name')")
        metrics.append((str(extra["type"]), str(extra.get("name") or extra["type"]), extra["value"]))
    if not metrics:
        raise ValueError(f"{where}: no metric found (expected top1/top5/... keys or a 'metrics' list)")

    out = []
    for metric_type, metric_name, value in metrics:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{where}: metric {metric_name!r} must be a finite number, got {value!r}")
        value = float(value) * scale
        if metric_type == "accuracy" and not 0.0 <= value <= 100.0:
            hint = " (fractions need \"unit\": \"fraction\")" if unit == "percent" else ""
            raise ValueError(f"{where}: accuracy {value} is not a percentage in [0, 100]{hint}")
        out.append(EvalEntry(dataset_name, dataset_type, split, metric_type, metric_name, value, task_type,
                             None if config is None else str(config)))
    return out


def results_from_json(path_or_dict: str | os.PathLike[str] | Mapping[str, Any] | Sequence[Any], *,
                      unit: str | None = None) -> list[EvalEntry]:
    """Evaluation entries from a results JSON file (path) or its parsed content.

    Accepted shapes:

    * one record: ``{"dataset": "fashion_mnist", "split": "test", "top1": 91.2, "top5": 99.8}``;
    * a list of records, or ``{"results": [record, ...]}``.

    A record's keys: ``dataset`` (Hub dataset id; known ids such as ``fashion_mnist``,
    ``imagenet-1k``, ``objectnet`` get their display name and canonical type), optional
    ``dataset_type`` / ``dataset_name`` overriding those, ``split`` (default ``"test"``),
    ``config``, ``task_type`` (default image-classification), ``unit`` (``"percent"``, the default,
    or ``"fraction"`` for values in [0, 1], converted to percent).  Metrics: every ``top<k>`` key
    becomes an ``accuracy`` metric named ``"Top-<k> accuracy"``; a ``metrics`` list of
    ``{"type", "name", "value"}`` adds any other metric.  Other keys (counts, paths, settings) are
    ignored, so the ObjectNet recipe's JSON is accepted as is.  ``unit`` given here overrides the
    records'.
    """
    where = "results"
    data: Any = path_or_dict
    if isinstance(path_or_dict, (str, os.PathLike)):
        where = str(path_or_dict)
        data = json.loads(Path(path_or_dict).read_text(encoding="utf-8"))
    if isinstance(data, Mapping) and "results" in data and isinstance(data["results"], list):
        data = data["results"]
    records = [data] if isinstance(data, Mapping) else data
    if not isinstance(records, Sequence) or isinstance(records, str):
        raise ValueError(f"{where}: expected a results record, a list of them or {{'results': [...]}}")
    out: list[EvalEntry] = []
    for i, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise ValueError(f"{where}[{i}]: a results record must be a JSON object, got {type(record).__name__}")
        out.extend(_record_entries(record, unit, f"{where}[{i}]" if len(records) > 1 else where))
    return out


def merge_results(existing: Iterable[EvalResult], new: Iterable[EvalResult]) -> list[EvalResult]:
    """Existing results, each replaced in place by a new one with the same key; others appended."""
    merged = list(existing)
    index = {eval_key(r): i for i, r in enumerate(merged)}
    for result in new:
        key = eval_key(result)
        if key in index:
            merged[index[key]] = result
        else:
            index[key] = len(merged)
            merged.append(result)
    return merged


def to_entries(results: Iterable[Any] | None) -> list[EvalEntry]:
    """EvalEntry / EvalResult / results-JSON records or paths, as EvalEntry."""
    out: list[EvalEntry] = []
    for r in results or ():
        if isinstance(r, EvalEntry):
            out.append(r)
        elif isinstance(r, EvalResult):
            out.append(EvalEntry.from_eval_result(r))
        elif isinstance(r, (Mapping, str, os.PathLike)):
            out.extend(results_from_json(r))
        else:
            raise TypeError(f"cannot read an evaluation result from {type(r).__name__}")
    return out
