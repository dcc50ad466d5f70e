"""Checkpoints written before the package layout changed still load, to the same logits.

``tests/fixtures/pre_redesign`` was written by rpg_hf at commit dddca55 (the last commit of the old
layout: ``rpg_hf.ring``, ``rpg_hf.kernels``, ``rpg_hf.reparam`` as one module) with
``save_pretrained``; ``expected.safetensors`` holds the input and the logits that code produced.
The load goes through transformers' Auto class in a fresh interpreter, as a user's would.

The logits are compared to float32 rounding, not bit for bit: the fixture was written on another
CPU, and oneDNN/BLAS pick different convolution and matmul kernels per instruction set (an AVX-512
Xeon and an AVX2 EPYC differ in the last bits).  A wrong permutation, sign or multiplier moves the
logits by O(1); the expansion itself is pinned bit for bit by the golden vectors in tests/core.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "pre_redesign"

LOAD = r"""
import sys, torch
from safetensors.torch import load_file
from transformers import AutoModelForImageClassification
import rpg_hf  # noqa: F401
folder, name, expected = sys.argv[1], sys.argv[2], load_file(sys.argv[3])
model = AutoModelForImageClassification.from_pretrained(folder).eval()
with torch.no_grad():
    logits = model(pixel_values=expected["pixel_values"]).logits
want = expected[name + ".logits"]
torch.testing.assert_close(logits, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))
print("ok", type(model).__name__, model.config.dof)
"""


@pytest.mark.parametrize("name", ["cifar_resnet18_w8", "vit_tiny_stage"])
def test_pre_redesign_checkpoint_loads_to_the_same_logits(name):
    folder = FIXTURES / name
    assert json.loads((folder / "config.json").read_text())["model_type"] == "rpg"
    out = subprocess.run([sys.executable, "-c", LOAD, str(folder), name, str(FIXTURES / "expected.safetensors")],
                         capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": ""}, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("ok RPGForImageClassification")
