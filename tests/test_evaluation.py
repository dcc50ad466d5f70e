"""The packaged ``evaluate`` metric (offline) and ``rpg_hf.evaluation.evaluate_pipeline`` on a tiny split."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

import rpg_hf

evaluate = pytest.importorskip("evaluate")
datasets = pytest.importorskip("datasets")

from rpg_hf.evaluation import evaluate_pipeline  # noqa: E402
from rpg_hf.metrics import TOPK_ACCURACY, load_topk_accuracy  # noqa: E402

NUM_LABELS = 10
NAMES = [f"class_{i}" for i in range(NUM_LABELS)]


def test_the_metric_loads_offline_from_the_package():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # conftest: no network
    metric = evaluate.load(TOPK_ACCURACY)
    assert metric.compute(predictions=[[3, 1, 2], [2, 0, 1], [5, 6, 7]], references=[3, 1, 0], k=(1, 3)) == {
        "top1": pytest.approx(1 / 3), "top3": pytest.approx(2 / 3)}
    assert load_topk_accuracy().compute(predictions=[4, 2], references=[4, 1]) == {"top1": 0.5, "top5": 0.5}


def _model():
    labels = dict(enumerate(NAMES))
    cfg = rpg_hf.RPGConfig(backbone="timm", architecture="test_resnet", dof=2000, num_labels=NUM_LABELS, seed=0,
                           image_size=32, id2label=labels, label2id={v: k for k, v in labels.items()})
    return rpg_hf.RPGForImageClassification(cfg).eval()


@pytest.fixture(scope="module")
def split():
    """12 images whose labels are chosen from the model's own ranking: 5 top-1 hits, 4 more in the
    top 5 (ranks 2-5), 3 misses (rank 6 or worse) — so the expected counts are known exactly."""
    model = _model()
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(12)]
    inputs = model.image_processor()(images, return_tensors="pt")
    with torch.no_grad():
        ranking = model(**inputs).logits.argsort(dim=-1, descending=True)
    ranks = [0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 7, 9]  # the label's rank in the model's prediction
    labels = [int(ranking[i, r]) for i, r in enumerate(ranks)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=NAMES)})
    return model, datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)


def test_evaluate_pipeline_counts_top1_and_top5_exactly(split):
    model, data = split
    result = evaluate_pipeline(model, data)
    assert (result["top1_correct"], result["top5_correct"], result["total"]) == (5, 9, 12)
    assert result["top1"] == pytest.approx(5 / 12) and result["top5"] == pytest.approx(9 / 12)
    assert "samples_per_second" in result  # evaluate's own timing keys come along


def test_evaluate_pipeline_from_a_saved_folder_with_bootstrap_intervals(split, tmp_path):
    model, data = split
    model.save_pretrained(tmp_path / "m")
    result = evaluate_pipeline(tmp_path / "m", data, strategy="bootstrap", n_resamples=200, random_state=0)
    assert (result["top1_correct"], result["top5_correct"]) == (5, 9)
    top1 = result["top1"]
    assert top1["score"] == pytest.approx(5 / 12)
    low, high = top1["confidence_interval"]
    assert 0.0 <= low < 5 / 12 < high <= 1.0 and top1["standard_error"] > 0
