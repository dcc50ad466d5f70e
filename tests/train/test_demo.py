"""``rpg-hf demo`` in a reduced form: the whole path of the README's first command, in seconds.

Why: the demo is what a newcomer runs first, so the test runs all of it — IDX loading, both arms
trained, the ring-only ``save_pretrained``, the reload through ``AutoModelForImageClassification``
with identical logits, the table — on a generated 10-class IDX directory with a tiny timm ResNet
(``test_resnet``), plus the error a missing dataset must give.  The reported accuracies are
recomputed here from the saved checkpoints alone.  The real thing (resnet18 on the Debian
Fashion-MNIST through the console script) is ``slow``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rpg_hf.hf.remote_code import REMOTE_CODE_FILES
from rpg_hf.train import demo
from rpg_hf.train.data import write_idx
from rpg_hf.train.models import match_vanilla_width


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    """MNIST-style IDX files: class k is a bright 8x8 square at its own place on a noisy background."""
    root = tmp_path_factory.mktemp("tiny-idx")
    rng = np.random.default_rng(0)
    arrays = {}
    for prefix, per_class in (("train", 24), ("t10k", 8)):
        labels = np.repeat(np.arange(10, dtype=np.uint8), per_class)
        rng.shuffle(labels)
        images = rng.integers(0, 60, size=(len(labels), 28, 28), dtype=np.uint8)
        for i, k in enumerate(labels):
            r, c = 2 + 9 * (k // 3 % 3), 2 + 9 * (k % 3)
            images[i, r : r + 8, c : c + 8] = 200 + 50 * (k // 9)
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
        arrays[prefix] = (images, labels)
    return root, arrays


@torch.no_grad()
def _top1_of_checkpoint(model: torch.nn.Module, data) -> float:
    """Top-1 (percent) of a reloaded checkpoint on the test split, normalised with the training
    images' per-channel mean/std as the demo documents; counted here, not by rpg_hf."""
    train_images, (test_images, test_labels) = data["train"][0], data["t10k"]
    x = torch.from_numpy(train_images).float().unsqueeze(1) / 255.0
    mean, std = x.mean(dim=(0, 2, 3)).view(1, -1, 1, 1), x.std(dim=(0, 2, 3)).clamp_min(1e-3).view(1, -1, 1, 1)
    xt = (torch.from_numpy(test_images).float().unsqueeze(1) / 255.0 - mean) / std
    out = model.eval()(xt)
    logits = out.logits if hasattr(out, "logits") else out
    return 100.0 * int((logits.argmax(1) == torch.from_numpy(test_labels).long()).sum()) / len(test_labels)


def test_demo_trains_both_arms_saves_ring_only_and_reloads(idx_dir, tmp_path, capsys):
    idx_dir, data = idx_dir
    out = tmp_path / "demo"
    res = demo.main(["--data", str(idx_dir), "--arch", "test_resnet", "--dof", "3000", "--train-samples", "0",
                     "--test-samples", "0", "--batch-size", "48", "--epochs", "8", "--lr", "0.05",
                     "--output-dir", str(out), "--no-progress", "--device", "cpu"])
    printed = capsys.readouterr().out
    rpg, vanilla = res["rpg"], res["vanilla"]
    assert res["train_images"] == 240 and res["test_images"] == 80

    assert rpg["identical_after_reload"] and rpg["reloaded_top1"] == rpg["top1"]
    assert rpg["dof"] == 3000 and rpg["compression"] > 10
    assert sorted(os.listdir(rpg["path"])) == sorted(["README.md", "config.json", "model.safetensors",
                                                      "preprocessor_config.json", *REMOTE_CODE_FILES])
    # the ring-only file holds the ring and the free tensors: far smaller than the plain model
    assert rpg["checkpoint_bytes"] < 4 * rpg["original_params"] / 5

    assert vanilla["method"] == "vanilla" and vanilla["compression"] == 1.0
    assert abs(vanilla["trainable_params"] - rpg["trainable_params"]) < 0.1 * rpg["trainable_params"]
    assert (out / f"vanilla-test_resnet-w{vanilla['width']}" / "model.safetensors").is_file()

    # the reported numbers are what the saved checkpoints give, counted here from the files alone
    import timm
    from transformers import AutoModelForImageClassification

    reloaded = AutoModelForImageClassification.from_pretrained(rpg["path"])
    vanilla_dir = out / f"vanilla-test_resnet-w{vanilla['width']}"
    plain = timm.create_model(f"local-dir:{vanilla_dir}", pretrained=True)
    assert _top1_of_checkpoint(reloaded, data) == rpg["top1"]
    assert _top1_of_checkpoint(plain, data) == vanilla["top1"]
    assert _top1_of_checkpoint(reloaded.expand(), data) == rpg["top1"]  # the plain expansion too
    # 8 epochs on 10 bright squares at 10 places: the RPG arm learns the task (chance: 10%)
    assert rpg["top1"] >= 90.0, rpg["top1"]
    assert all(r["train_seconds"] > 0 for r in (rpg, vanilla))
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


FASHION_MNIST = Path(demo.build_parser().parse_args([]).data)


@pytest.mark.slow
@pytest.mark.skipif(not (FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(),
                    reason="needs the Debian package dataset-fashion-mnist")
def test_demo_command_on_fashion_mnist(tmp_path):
    """The README's main job through the console script: resnet18 at 45K DoF on Fashion-MNIST (subsets).

    About 2.5 minutes on 2 idle CPU cores (the full-width resnet18 of the RPG arm is most of it)."""
    exe = Path(sys.executable).parent / "rpg-hf"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    proc = subprocess.run([str(exe), "demo", "--train-samples", "4000", "--test-samples", "1000",
                           "--output-dir", str(tmp_path), "--no-progress"],
                          capture_output=True, text=True, env=env, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = proc.stdout
    assert "identical logits" in text and "45,000" in text
    rows = {line.split()[0]: line for line in text.splitlines() if line.startswith(("RPG resnet18", "vanilla resnet18"))}
    top1 = {k: float(next(t for t in v.split() if t.endswith("%"))[:-1]) for k, v in rows.items()}
    assert set(top1) == {"RPG", "vanilla"}
    # chance is 10%; measured 58.3% (vanilla 60.2%) for one epoch over these 4,000 images
    assert top1["RPG"] >= 40.0 and top1["vanilla"] >= 40.0, text
    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(tmp_path / "rpg-resnet18-dof45000")
    assert model.num_dof() == 45_000


def test_missing_dataset_says_how_to_install_it(tmp_path):
    with pytest.raises(SystemExit) as info:
        demo.main(["--data", str(tmp_path / "no-such-dir"), "--no-progress"])
    assert "apt-get install -y dataset-fashion-mnist" in str(info.value)


def test_vanilla_width_matches_the_rpg_parameter_count():
    width, params = match_vanilla_width("resnet18", 62_866, num_classes=10, in_chans=1)
    lower, _ = match_vanilla_width("resnet18", 40_000, num_classes=10, in_chans=1)
    assert abs(params - 62_866) < 0.02 * 62_866 and lower < width < 512


def test_demo_flags_are_wired_into_the_cli():
    from rpg_hf.cli import build_parser

    args = build_parser().parse_args(["demo", "--dof", "1000", "--train-samples", "500", "--epochs", "2"])
    assert (args.dof, args.train_samples, args.epochs, args.arch) == (1000, 500, 2, "resnet18")
    defaults = demo.build_parser().parse_args([])
    assert defaults.data == "/usr/share/datasets/fashion-mnist" and defaults.dof == 45_000
