"""ObjectNet protocol tests on a tiny fake ObjectNet tree written in the real mapping-file formats.

Why these checks: ObjectNet numbers are only comparable with published ones if the 2 px border
crop, the ImageNet-name -> pytorch-index resolution and the max-projection onto the overlap classes
are exactly the official ones, and none of that shows up as an error when it is wrong.  The fake
mappings use a non-identity pytorch -> 2012-id permutation, ImageNet names containing commas and a
duplicated ImageNet name (like the real "crane"), so a loader that takes a shortcut fails here.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
from rpg_hf.train.evaluate import TopKAccuracy  # noqa: E402
from rpg_hf.train.objectnet import (  # noqa: E402
    ObjectNetDataset,
    evaluate_imagenet_subset,
    evaluate_objectnet,
    imagenet_label_to_class,
    imagenet_val_subset_mask,
    load_objectnet_mappings,
    project_logits,
)

SCRIPT = REPO / "recipes" / "eval_objectnet.py"
RED = (255, 0, 0)
W, H, BORDER = 24, 20, 2

# (folder, ObjectNet label, pytorch ImageNet indices) of the overlap classes, in sorted folder order.
OVERLAP = [
    ("alarm_clock", "Alarm clock", (409, 530)),
    ("banana", "Banana", (954,)),
    ("bicycle", "Bicycle", (444, 671)),
    ("chair", "Chair", (423, 559, 765)),
    ("mug", "Mug", (504,)),
    ("pen", "Pen", (418, 563, 749)),
    ("wok", "Wok", (909,)),
]
NON_OVERLAP = {"squeegee": "Squeegee", "coaster": "Coaster"}  # squeegee has images, coaster none
DUPLICATE_NAME_PYTORCH = (134, 517)  # both lines read "crane", as in the real label file
# Target rank of the true class among the overlap classes, per image (two images per class).
RANKS = [0, 1, 2, 3, 4, 5, 6, 0, 0, 1, 4, 5, 0, 2]


def line_of(pytorch_index: int) -> int:
    """Fake 2012 id (label-file line) of a pytorch index: a permutation of 0..999."""
    return (7 * pytorch_index + 3) % 1000


PYTORCH_OF_LINE = {line_of(p): p for p in range(1000)}


def name_of_line(line: int) -> str:
    if PYTORCH_OF_LINE[line] in DUPLICATE_NAME_PYTORCH:
        return "crane"
    return f"imagenet class {line}, synonym {line}"


def write_mappings(root: Path, *, label_file: str = "imagenet_to_label_2012_v2") -> None:
    m = root / "mappings"
    m.mkdir(parents=True, exist_ok=True)
    folder_to_label = {folder: label for folder, label, _ in OVERLAP} | NON_OVERLAP
    (m / "folder_to_objectnet_label.json").write_text(json.dumps(folder_to_label, indent=2))
    on_to_in = {label: "; ".join(name_of_line(line_of(p)) for p in ids) for _, label, ids in OVERLAP}
    (m / "objectnet_to_imagenet_1k.json").write_text(json.dumps(on_to_in, indent=2))
    (m / "pytorch_to_imagenet_2012_id.json").write_text(json.dumps({str(p): line_of(p) for p in range(1000)}))
    (m / label_file).write_text("".join(name_of_line(j) + "\n" for j in range(1000)))


def write_image(path: Path, interior: tuple[int, int, int], size: tuple[int, int] = (W, H)) -> None:
    arr = np.empty((size[1], size[0], 3), dtype=np.uint8)
    arr[:] = RED
    arr[BORDER:-BORDER, BORDER:-BORDER] = interior
    Image.fromarray(arr).save(path)


def image_colour(k: int) -> tuple[int, int, int]:
    return (10 + 10 * k, 100, 50)


def make_tree(root: Path) -> dict[int, int]:
    """Writes the fake ObjectNet; returns image id k -> class index."""
    write_mappings(root)
    labels: dict[int, int] = {}
    k = 0
    for rep in range(2):
        for c, (folder, _, _) in enumerate(OVERLAP):
            d = root / "images" / folder
            d.mkdir(parents=True, exist_ok=True)
            write_image(d / f"img_{k:02d}.png", image_colour(k))
            labels[k] = c
            k += 1
        d = root / "images" / "squeegee"
        d.mkdir(parents=True, exist_ok=True)
        write_image(d / f"other_{rep}.png", (1, 2, 3))
    (root / "images" / "mug" / "notes.txt").write_text("not an image")
    return labels


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, int]]:
    root = tmp_path_factory.mktemp("objectnet") / "objectnet-1.0"
    return root, make_tree(root)


def crafted_logits(label: int, rank: int, k: int) -> torch.Tensor:
    """1000 logits whose projection puts class ``label`` at ``rank`` among the overlap classes.

    Each class's score sits on one of its ImageNet ids (which one varies with k), its other ids
    are a bit lower, and an unmapped ImageNet class gets the global max: a plain argmax over the
    1000 logits would therefore be wrong for every image.
    """
    g = torch.Generator().manual_seed(k)
    logits = torch.rand(1000, generator=g) * 0.5
    logits[0] = 100.0
    others = [c for c in range(len(OVERLAP)) if c != label]
    order = others[:rank] + [label] + others[rank:]
    for pos, c in enumerate(order):
        ids = OVERLAP[c][2]
        score = 10.0 - pos
        for i in ids:
            logits[i] = score - 0.25
        logits[ids[k % len(ids)]] = score
    return logits


class LookupModel(torch.nn.Module):
    """Reads the image id from the red channel of the (uniform, border-free) image."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("table", table)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        red = x[:, 0].mean(dim=(1, 2)) * 255.0
        k = torch.round((red - 10.0) / 10.0).long()
        return self.table[k]


# --------------------------------------------------------------------------- metrics


def test_topk_accuracy_hand_example() -> None:
    logits = torch.tensor([
        [0.1, 0.9, 0.3, 0.2, 0.0, 0.5, 0.4],  # order: 1,5,6,2,3,0,4
        [0.7, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6],  # order: 0,6,5,4,3,2,1
        [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6],  # order: 6,5,4,3,2,1,0
    ])
    m = TopKAccuracy((1, 2, 5))
    m.update(logits, torch.tensor([1, 3, 0]))
    assert m.counts() == {"top1_correct": 1, "top2_correct": 1, "top5_correct": 2, "total": 3}
    assert m.compute() == pytest.approx({"top1": 100 / 3, "top2": 100 / 3, "top5": 200 / 3})


def test_topk_accuracy_accumulates_clamps_and_ignores_negative() -> None:
    m = TopKAccuracy((1, 5))
    assert all(math.isnan(v) for v in m.compute().values())
    assert m.counts() == {"top1_correct": 0, "top5_correct": 0, "total": 0}
    logits = torch.tensor([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0], [1.0, 2.0, 3.0]])
    m.update(logits, torch.tensor([0, 2, -1]))  # top-5 over 3 classes: k clamped, every sample hits
    m.update(logits[:1], torch.tensor([1]))
    m.update(logits[:2], torch.tensor([-1, -7]))  # any negative label is skipped
    m.update(logits[:0], torch.tensor([], dtype=torch.long))  # an empty batch counts nothing
    counts = m.counts()
    assert counts == {"top1_correct": 1, "top5_correct": 3, "total": 3}
    assert all(type(v) is int for v in counts.values())
    assert m.compute() == pytest.approx({"top1": 100 / 3, "top5": 100.0})
    with pytest.raises(ValueError, match="label 3 out of range"):
        m.update(logits, torch.tensor([0, 3, 1]))
    with pytest.raises(TypeError, match="integer"):
        m.update(logits, torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="after batches over 3"):
        m.update(torch.zeros(1, 4), torch.tensor([0]))
    with pytest.raises(ValueError, match="rows of logits"):
        m.update(logits, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="at least 2 classes"):
        TopKAccuracy().update(torch.zeros(2, 1), torch.tensor([0, 0]))


def test_topk_accuracy_equals_topk_counting() -> None:
    """Exact integer counts, equal to counting hits among ``torch.topk`` over all batches."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(200, 12, generator=g)
    labels = torch.randint(-1, 12, (200,), generator=g)
    m = TopKAccuracy((1, 3, 5, 20))
    for lo in range(0, 200, 17):
        m.update(logits[lo:lo + 17], labels[lo:lo + 17])
    valid = labels >= 0
    want = {f"top{k}_correct": int((logits[valid].topk(min(k, 12), dim=1).indices == labels[valid, None]).any(1).sum())
            for k in (1, 3, 5, 20)}
    assert m.counts() == {**want, "total": int(valid.sum())}
    assert m.counts()["top20_correct"] == int(valid.sum())  # k above the number of classes: every sample


# --------------------------------------------------------------------------- mappings


def test_load_mappings_real_format(tree: tuple[Path, dict[int, int]]) -> None:
    root, _ = tree
    mapping = load_objectnet_mappings(root)
    assert mapping.num_classes == len(OVERLAP)
    assert mapping.folders == tuple(f for f, _, _ in OVERLAP)
    assert mapping.class_names == tuple(lab for _, lab, _ in OVERLAP)
    assert mapping.imagenet_indices == tuple(tuple(sorted(ids)) for _, _, ids in OVERLAP)
    assert mapping.folder_to_class == {f: c for c, (f, _, _) in enumerate(OVERLAP)}
    assert "squeegee" not in mapping.folder_to_class


def test_load_mappings_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="mappings"):
        load_objectnet_mappings(tmp_path)
    write_mappings(tmp_path)
    (tmp_path / "mappings" / "pytorch_to_imagenet_2012_id.json").unlink()
    with pytest.raises(FileNotFoundError, match="pytorch_to_imagenet_2012_id.json"):
        load_objectnet_mappings(tmp_path)


def test_load_mappings_txt_label_file_and_unknown_name(tmp_path: Path) -> None:
    write_mappings(tmp_path, label_file="imagenet_to_label_2012_v2.txt")
    assert load_objectnet_mappings(tmp_path).num_classes == len(OVERLAP)
    path = tmp_path / "mappings" / "objectnet_to_imagenet_1k.json"
    data = json.loads(path.read_text())
    data["Banana"] = "plantain"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="plantain"):
        load_objectnet_mappings(tmp_path)
    data["Banana"] = "crane"  # ambiguous in ImageNet: must not silently pick one
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="ambiguous"):
        load_objectnet_mappings(tmp_path)


def test_project_logits_is_max_over_imagenet_ids(tree: tuple[Path, dict[int, int]]) -> None:
    mapping = load_objectnet_mappings(tree[0])
    logits = torch.randn(5, 1000, generator=torch.Generator().manual_seed(0))
    expected = torch.tensor([[max(float(row[i]) for i in ids) for _, _, ids in OVERLAP] for row in logits])
    out = project_logits(logits, mapping)
    assert out.shape == (5, len(OVERLAP))
    assert torch.equal(out, expected)
    with pytest.raises(ValueError):
        project_logits(torch.zeros(2, 10), mapping)


def test_imagenet_val_label_map(tree: tuple[Path, dict[int, int]]) -> None:
    mapping = load_objectnet_mappings(tree[0])
    table = imagenet_label_to_class(mapping)
    assert table.shape == (1000,)
    for c, (_, _, ids) in enumerate(OVERLAP):
        assert all(int(table[i]) == c for i in ids)
    n_ids = sum(len(ids) for _, _, ids in OVERLAP)
    assert int((table >= 0).sum()) == n_ids
    assert int(imagenet_val_subset_mask(mapping).sum()) == n_ids


# --------------------------------------------------------------------------- dataset


def test_dataset_crops_border_and_skips_other_folders(tree: tuple[Path, dict[int, int]]) -> None:
    root, labels = tree
    ds = ObjectNetDataset(root)
    assert len(ds) == len(labels)
    assert ds.skipped_folders == ["squeegee"]
    for i in range(len(ds)):
        img, label = ds[i]
        assert img.mode == "RGB" and img.size == (W - 2 * BORDER, H - 2 * BORDER)
        arr = np.asarray(img)
        assert not ((arr[..., 0] == 255) & (arr[..., 1] == 0) & (arr[..., 2] == 0)).any()
        k = int(Path(ds.samples[i][0]).stem.split("_")[1])
        assert label == labels[k]
        assert tuple(arr[0, 0]) == image_colour(k)
    # a 1 px crop leaves the red frame in place
    img, _ = ObjectNetDataset(root, border=1)[0]
    assert img.size == (W - 2, H - 2) and tuple(np.asarray(img)[0, 0]) == RED


def test_evaluate_objectnet_matches_hand_computed(tree: tuple[Path, dict[int, int]]) -> None:
    from torch.utils.data import DataLoader
    from torchvision.transforms import ToTensor

    root, labels = tree
    mapping = load_objectnet_mappings(root)
    table = torch.stack([crafted_logits(labels[k], RANKS[k], k) for k in range(len(labels))])
    model = LookupModel(table).eval()
    assert int(model.table.argmax(dim=1).unique()) == 0  # raw argmax never names an overlap class
    loader = DataLoader(ObjectNetDataset(root, transform=ToTensor()), batch_size=4)
    res = evaluate_objectnet(model, loader, mapping)
    n = len(RANKS)
    top1 = sum(r == 0 for r in RANKS)
    top5 = sum(r < 5 for r in RANKS)
    assert (res["n_images"], res["top1_correct"], res["top5_correct"], res["classes"]) == (n, top1, top5, 7)
    assert res["top1"] == pytest.approx(100.0 * top1 / n)
    assert res["top5"] == pytest.approx(100.0 * top5 / n)


def test_evaluate_imagenet_subset_maps_labels_and_ignores_others(tree: tuple[Path, dict[int, int]]) -> None:
    mapping = load_objectnet_mappings(tree[0])
    # "images" are the logits themselves; ImageNet labels: chair id 765, pen id 418, unmapped 0
    logits = torch.stack([crafted_logits(3, 0, 1), crafted_logits(5, 2, 2), crafted_logits(0, 0, 3)])
    labels = torch.tensor([765, 418, 0])
    res = evaluate_imagenet_subset(lambda x: x, [(logits, labels)], mapping)
    assert (res["n_images"], res["top1_correct"], res["top5_correct"]) == (2, 1, 2)


# --------------------------------------------------------------------------- recipe


def _load_recipe():
    return importlib.import_module("recipes.eval_objectnet")


def _env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "src"), env.get("PYTHONPATH")) if p)
    return env


def test_recipe_help() -> None:
    out = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, env=_env(),
                         timeout=120)
    assert out.returncode == 0, out.stderr
    for flag in ("--model", "--objectnet-root", "--imagenet-val", "--output", "--model-card", "--crop-pct"):
        assert flag in out.stdout


def test_update_model_card_replaces_objectnet_results(tmp_path: Path) -> None:
    from huggingface_hub import ModelCard

    recipe = _load_recipe()
    (tmp_path / "README.md").write_text("---\nlicense: apache-2.0\n---\n\n# Tiny model\n\nSome text.\n")
    recipe.update_model_card(tmp_path, {"top1": 10.0, "top5": 30.0, "classes": 113}, model_name="tiny")
    recipe.update_model_card(tmp_path, {"top1": 12.5, "top5": 33.25, "classes": 113})
    card = ModelCard.load(tmp_path / "README.md")
    results = [r for r in card.data.eval_results if r.dataset_name == "ObjectNet"]
    assert sorted((r.metric_name, r.metric_value) for r in results) == [
        ("Top-1 Accuracy", 12.5), ("Top-5 Accuracy", 33.25)]
    assert all(r.task_type == "image-classification" for r in results)
    assert card.data.license == "apache-2.0" and "Some text." in card.text


# The recipe's model below has constant logits (zero head weights): every image gets this ranking
# of the overlap classes, and an unmapped ImageNet class (index 0) gets the global max.
CONSTANT_RANKING = ["chair", "pen", "bicycle", "alarm_clock", "mug", "banana", "wok"]


def _constant_logits() -> torch.Tensor:
    bias = torch.zeros(1000)
    bias[0] = 100.0
    ids = {folder: pytorch for folder, _, pytorch in OVERLAP}
    for rank, folder in enumerate(CONSTANT_RANKING):
        for i in ids[folder]:
            bias[i] = 9.5 - rank
        bias[ids[folder][-1]] = 10.0 - rank  # the class score sits on its last ImageNet id
    return bias


def _expected_constant_results() -> dict[str, float]:
    """By hand: every image is predicted "chair" (top-1) and the first five classes (top-5)."""
    per_class = {folder: 2 for folder, _, _ in OVERLAP}  # ObjectNet: two images per overlap class
    n_ids = {folder: len(pytorch) for folder, _, pytorch in OVERLAP}  # ImageNet val: one image per id
    top5 = CONSTANT_RANKING[:5]
    return {
        "n": 14, "top1_correct": per_class["chair"], "top5_correct": sum(per_class[f] for f in top5),
        "val_n": 13, "val_top1": 100 * n_ids["chair"] / 13, "val_top5": 100 * sum(n_ids[f] for f in top5) / 13,
    }


@pytest.fixture(scope="module")
def recipe_inputs(tree: tuple[Path, dict[int, int]], tmp_path_factory) -> tuple[Path, Path]:
    """A timm folder whose model has constant logits, and an ImageNet-val tree (one image per class)."""
    import timm
    from timm.models import save_for_hf

    root = tmp_path_factory.mktemp("recipe")
    model = timm.create_model("test_resnet", pretrained=False, num_classes=1000)
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.copy_(_constant_logits())
    folder = root / "tiny"
    save_for_hf(model, str(folder))
    (folder / "README.md").write_text("---\nlicense: apache-2.0\n---\n\n# tiny\n")
    val = root / "imagenet_val"  # WordNet-id-like names sort in pytorch order
    for i in range(1000):
        (val / f"n{i:08d}").mkdir(parents=True)
        Image.new("RGB", (8, 8), (i % 256, 0, 0)).save(val / f"n{i:08d}" / "x.png")
    return folder, val


def _recipe_argv(tree_root: Path, folder: Path, val: Path, out: Path) -> list[str]:
    return ["--model", f"local-dir:{folder}", "--objectnet-root", str(tree_root), "--imagenet-val", str(val),
            "--batch-size", "4", "--num-workers", "0", "--image-size", "32", "--crop-pct", "1.0",
            "--output", str(out), "--model-card"]


def _check_recipe_results(res: dict, folder: Path) -> None:
    want = _expected_constant_results()
    assert res["dataset"] == "ObjectNet" and res["classes"] == len(OVERLAP)
    assert (res["n_images"], res["top1_correct"], res["top5_correct"]) == (want["n"], want["top1_correct"],
                                                                          want["top5_correct"])
    assert res["top1"] == pytest.approx(100 * 2 / 14) and res["top5"] == pytest.approx(100 * 10 / 14)
    val = res["imagenet_val_subset"]
    assert val["n_images"] == want["val_n"]
    assert val["top1"] == pytest.approx(want["val_top1"]) and val["top1"] == pytest.approx(100 * 3 / 13)
    assert val["top5"] == pytest.approx(want["val_top5"]) and val["top5"] == pytest.approx(100 * 11 / 13)
    from huggingface_hub import ModelCard

    card = ModelCard.load(folder / "README.md")
    scores = {r.metric_name: r.metric_value for r in card.data.eval_results if r.dataset_name == "ObjectNet"}
    assert scores == {"Top-1 Accuracy": pytest.approx(res["top1"], abs=1e-3),
                      "Top-5 Accuracy": pytest.approx(res["top5"], abs=1e-3)}


def test_recipe_in_process_gives_the_hand_computed_scores(tree, recipe_inputs, tmp_path: Path) -> None:
    from accelerate.state import AcceleratorState, GradientState

    folder, val = recipe_inputs
    recipe = _load_recipe()
    try:
        res = recipe.main(_recipe_argv(tree[0], folder, val, tmp_path / "results.json"))
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
    assert json.loads((tmp_path / "results.json").read_text()) == res
    _check_recipe_results(res, folder)


def test_recipe_bootstrap_intervals(tree, recipe_inputs, tmp_path: Path) -> None:
    """--bootstrap N: 95% intervals around the point estimates, from the counts (2 and 10 of 14 images)."""
    pytest.importorskip("scipy")
    from accelerate.state import AcceleratorState, GradientState

    from rpg_hf.evaluation import bootstrap_accuracy_interval

    folder, val = recipe_inputs
    argv = [a for a in _recipe_argv(tree[0], folder, val, tmp_path / "results.json") if a != "--model-card"]
    try:
        res = _load_recipe().main([*argv, "--bootstrap", "500"])
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
    assert res["bootstrap_resamples"] == 500
    for k in (1, 5):
        low, high = res[f"top{k}_ci95"]
        assert 0.0 <= low < res[f"top{k}"] < high <= 100.0
        ci = bootstrap_accuracy_interval(res[f"top{k}_correct"], res["n_images"], n_resamples=500, random_state=0)
        assert [100 * v for v in ci["confidence_interval"]] == pytest.approx([low, high])


@pytest.mark.slow
def test_recipe_end_to_end_with_tiny_timm_model(tree, recipe_inputs, tmp_path: Path) -> None:
    """The recipe as a user runs it: its own interpreter, the same hand-computed scores."""
    folder, val = recipe_inputs
    out = tmp_path / "res" / "results.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), *_recipe_argv(tree[0], folder, val, out)],
                          capture_output=True, text=True, env=_env(), timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _check_recipe_results(json.loads(out.read_text()), folder)
