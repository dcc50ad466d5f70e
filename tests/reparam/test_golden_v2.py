"""Whole-model golden hash of generator version 2 (the default), derived from its specification module.

``test_reparam.py`` pins version 1 the same way; this file pins the construction every new model
uses.  SHA-256 of every generated float32 weight (little endian, recorded order) of timm's
`test_resnet` (10 classes) at dof=5000, seed=0, the ring set to an integer pattern (no RNG).
"""

from __future__ import annotations

import hashlib
import struct
import sys
from pathlib import Path

import timm
import torch
from torch import nn

import rpg_hf

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "core"))  # spec_v1 / spec_v2, whatever ran first
import spec_v1  # noqa: E402
import spec_v2  # noqa: E402

GOLDEN_TEST_RESNET_V2_SHA256 = "c70c7a24c3dfafceb08a3a8741638337e7156f5ca5889742b6dd560ad735fff3"


def _pattern(n: int) -> list[float]:
    return [((i * 2654435761) % 1000 - 500) / 512 for i in range(n)]  # exact in float32


def _sha256_f32(rows) -> str:
    return hashlib.sha256(b"".join(struct.pack(f"<{len(r)}f", *r) for r in rows)).hexdigest()


def test_golden_v2_hash_is_the_specs():
    convs = [m for m in timm.create_model("test_resnet", num_classes=10).modules() if isinstance(m, nn.Conv2d)]
    layers = [(tuple(c.weight.shape), spec_v1.conv_multiplier(c.out_channels, c.kernel_size)) for c in convs[1:]]
    assert _sha256_f32(spec_v2.expand_float32(_pattern(5000), layers, seed=0)) == GOLDEN_TEST_RESNET_V2_SHA256


def test_default_model_expands_to_the_golden_v2_hash():
    model = rpg_hf.reparameterize(timm.create_model("test_resnet", num_classes=10), rpg_hf.RPGSpec(dof=5000))
    assert model.rpg.spec.generator_version == 2 == rpg_hf.GENERATOR_VERSION
    with torch.no_grad():
        model.rpg.rings[0].copy_(torch.tensor(_pattern(5000)))
    weights = model.rpg.generate_all()
    blob = b"".join(w.contiguous().numpy().astype("<f4").tobytes() for w in weights)
    assert hashlib.sha256(blob).hexdigest() == GOLDEN_TEST_RESNET_V2_SHA256
    plain = rpg_hf.expand(model)
    for layer, w in zip(model.rpg.layers, weights, strict=True):
        assert torch.equal(plain.get_submodule(layer.name).weight, w)
