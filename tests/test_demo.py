"""``rpg-hf demo`` in a reduced form: the whole path of the README's first command, in seconds.

Why: the demo is what a newcomer runs first, so the test runs all of it — IDX loading, both arms
trained, the ring-only ``save_pretrained``, the reload through ``AutoModelForImageClassification``
with identical logits, the table — on a generated 10-class IDX directory with a tiny timm ResNet
(``test_resnet``), plus the error a missing dataset must give.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from rpg_hf import demo
from rpg_hf.data import write_idx


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    """MNIST-style IDX files: class k is a bright 8x8 square at its own place on a noisy background."""
    root = tmp_path_factory.mktemp("tiny-idx")
    rng = np.random.default_rng(0)
    for prefix, per_class in (("train", 24), ("t10k", 8)):
        labels = np.repeat(np.arange(10, dtype=np.uint8), per_class)
        rng.shuffle(labels)
        images = rng.integers(0, 60, size=(len(labels), 28, 28), dtype=np.uint8)
        for i, k in enumerate(labels):
            r, c = 2 + 9 * (k // 3 % 3), 2 + 9 * (k % 3)
            images[i, r : r + 8, c : c + 8] = 200 + 50 * (k // 9)
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return root


def test_demo_trains_both_arms_saves_ring_only_and_reloads(idx_dir, tmp_path, capsys):
    out = tmp_path / "demo"
    res = demo.main(["--data", str(idx_dir), "--arch", "test_resnet", "--dof", "3000", "--train-samples", "0",
                     "--test-samples", "0", "--batch-size", "48", "--epochs", "2", "--lr", "0.05",
                     "--output-dir", str(out), "--no-progress", "--device", "cpu"])
    printed = capsys.readouterr().out
    rpg, vanilla = res["rpg"], res["vanilla"]
    assert res["train_images"] == 240 and res["test_images"] == 80

    assert rpg["identical_after_reload"] and rpg["reloaded_top1"] == rpg["top1"]
    assert rpg["dof"] == 3000 and rpg["compression"] > 10
    assert sorted(os.listdir(rpg["path"])) == ["README.md", "config.json", "model.safetensors",
                                               "preprocessor_config.json"]
    # the ring-only file holds the ring and the free tensors: far smaller than the plain model
    assert rpg["checkpoint_bytes"] < 4 * rpg["original_params"] / 5

    assert vanilla["method"] == "vanilla" and vanilla["compression"] == 1.0
    assert abs(vanilla["trainable_params"] - rpg["trainable_params"]) < 0.1 * rpg["trainable_params"]
    assert (out / f"vanilla-test_resnet-w{vanilla['width']}" / "model.safetensors").is_file()

    for r in (rpg, vanilla):
        assert 0.0 <= r["top1"] <= 100.0 and r["train_seconds"] > 0
    lines = printed.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("method"))
    assert "DoF" in lines[header] and "compression" in lines[header] and "checkpoint" in lines[header]
    assert lines[header + 2].startswith("RPG test_resnet") and lines[header + 3].startswith("vanilla test_resnet")
    assert f"{rpg['top1']:.2f}%" in lines[header + 2] and "3,000" in lines[header + 2]
    assert "identical logits" in printed

    from huggingface_hub import ModelCard

    card = ModelCard.load(os.path.join(rpg["path"], "README.md"))
    top1 = {r.metric_name: r.metric_value for r in card.data.eval_results}["Top-1 accuracy"]
    assert top1 == pytest.approx(rpg["top1"]) and card.data.eval_results[0].dataset_type == idx_dir.name


def test_missing_dataset_says_how_to_install_it(tmp_path):
    with pytest.raises(SystemExit) as info:
        demo.main(["--data", str(tmp_path / "no-such-dir"), "--no-progress"])
    assert "apt-get install -y dataset-fashion-mnist" in str(info.value)


def test_vanilla_width_matches_the_rpg_parameter_count():
    width, params = demo.match_vanilla_width("resnet18", 62_866, num_classes=10, in_chans=1)
    lower, _ = demo.match_vanilla_width("resnet18", 40_000, num_classes=10, in_chans=1)
    assert abs(params - 62_866) < 0.02 * 62_866 and lower < width < 512


def test_demo_flags_are_wired_into_the_cli():
    from rpg_hf.cli import build_parser

    args = build_parser().parse_args(["demo", "--dof", "1000", "--train-samples", "500", "--epochs", "2"])
    assert (args.dof, args.train_samples, args.epochs, args.arch) == (1000, 500, 2, "resnet18")
    defaults = demo.build_parser().parse_args([])
    assert defaults.data == "/usr/share/datasets/fashion-mnist" and defaults.dof == 45_000
