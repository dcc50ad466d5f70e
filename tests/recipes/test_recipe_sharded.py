"""recipes/train.py under ``accelerate launch`` with FSDP2 and with DeepSpeed ZeRO-3: two CPU processes.

The launch configs are the repository's own (``recipes/configs/fsdp2_8.yaml``, ``ds_zero3.yaml``)
with the process count, mixed precision and device changed for this machine; the run must end
where the one-process run with the full batch ends, and its gathered model folder must load with
``from_pretrained``.  About 20 s a launch, so ``slow``; the sharding rule itself is tested fast in
``tests/test_sharding.py``.
"""

from __future__ import annotations

import importlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
TINY_VIT = json.dumps({"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "intermediate_size": 64, "patch_size": 8})
COLOURS = [(220, 40, 40), (40, 200, 60), (50, 60, 230)]


def _args(data: Path, out: Path, batch: int) -> list[str]:
    return ["--data", str(data), "--val-split", "val", "--cache-dir", str(data.parent / f"{data.name}-cache"),
            "--arch", "vit", "--vit-config", TINY_VIT, "--dof", "2000", "--image-size", "16",
            "--optimizer", "sgd", "--lr", "0.05", "--max-steps", "6", "--batch-size", str(batch),
            "--num-workers", "0", "--log-every", "1", "--checkpoint-every", "3", "--eval-every", "3",
            "--log-with", "none", "--no-progress", "--output-dir", str(out)]


@pytest.fixture(scope="module")
def imagefolder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("imagefolder")
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 4)):
        for c, colour in enumerate(COLOURS):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = np.asarray(colour)[None, None, :] + rng.normal(0, 40, (16, 16, 3))
                Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def one_process_run(imagefolder, tmp_path_factory) -> Path:
    from accelerate.state import AcceleratorState, GradientState

    out = tmp_path_factory.mktemp("one-proc") / "run"
    try:
        importlib.import_module("recipes.train").main(_args(imagefolder, out, batch=8))
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
    return out


def _cpu_config(name: str, tmp: Path) -> Path:
    config = yaml.safe_load((ROOT / "recipes" / "configs" / name).read_text())
    config.update(num_processes=2, mixed_precision="no", use_cpu=True)
    config.pop("gpu_ids", None)
    path = tmp / name
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("config", ["fsdp2_8.yaml", "ds_zero3.yaml"])
def test_sharded_launch_matches_one_process_and_saves_a_loadable_folder(config, imagefolder, one_process_run,
                                                                       tmp_path):
    if config.startswith("ds_"):
        pytest.importorskip("deepspeed")
    out = tmp_path / "run"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--config_file",
           str(_cpu_config(config, tmp_path)), "--main_process_port", str(port), str(ROOT / "recipes" / "train.py"),
           *_args(imagefolder, out, batch=4)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, f"accelerate launch failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    results = json.loads((out / "results.json").read_text())
    assert results["world_size"] == 2 and results["method"] == "rpg" and results["dof"] == 2000
    sharded, single = load_file(out / "model" / "model.safetensors"), load_file(one_process_run / "model" /
                                                                               "model.safetensors")
    assert sharded.keys() == single.keys()
    for key in single:
        assert (sharded[key].double() - single[key].double()).abs().max() <= 1e-5, key
    from transformers import AutoModelForImageClassification

    import rpg_hf

    model = AutoModelForImageClassification.from_pretrained(out / "model")
    assert type(model) is rpg_hf.RPGForImageClassification
    assert torch.equal(model.generator.rings[0].detach(), sharded["backbone.rpg.rings.0"])
