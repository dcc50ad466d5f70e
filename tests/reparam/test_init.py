"""The initialisation is pinned (DESIGN §1): the ring is Kaiming-normal for the reference fan, and every
generated weight starts with the std its layer would have had without RPG.

ring ~ N(0, 2 / F_ref), F_ref = 512·3·3; a generated conv's multiplier sqrt(F_ref / fan_out) gives std
sqrt(2 / fan_out) (Kaiming fan_out, relu), fan_out = out_channels · kernel area whatever the groups
(grouped and depthwise convs included); a generated Linear gets std ``linear_std``.  Measured on real
models at a DoF large enough for the sample stds to sit within a few percent.
"""

from __future__ import annotations

import math

import pytest
import timm
import torch
from torch import nn

import rpg_hf

REFERENCE_FAN = 512 * 3 * 3


def _model(name: str, **kw):
    torch.manual_seed(0)
    return rpg_hf.reparameterize(timm.create_model(name, num_classes=10, **kw), rpg_hf.RPGSpec(dof=200_000))


def test_ring_is_kaiming_normal_for_the_reference_fan():
    ring = _model("resnet18").rpg.rings[0].detach()
    assert abs(float(ring.std()) / math.sqrt(2 / REFERENCE_FAN) - 1) < 0.01
    assert abs(float(ring.mean())) < 3 * math.sqrt(2 / REFERENCE_FAN) / math.sqrt(ring.numel())


@pytest.mark.parametrize("name,kw", [("resnet18", {}), ("convnext_atto", {"conv_mlp": False}), ("efficientnet_b0", {}),
                                     ("resnext26ts", {})])
def test_every_generated_weight_starts_with_its_layers_std(name, kw):
    model = _model(name, **kw)
    ring_std = float(model.rpg.rings[0].detach().std())
    kinds = set()
    with torch.no_grad():
        for layer in model.rpg.layers:
            module = model.get_submodule(layer.name)
            w = module.weight
            if isinstance(module, nn.Conv2d):
                fan_out = w.shape[0] * math.prod(w.shape[2:])
                want = math.sqrt(2 / fan_out)
                kinds.add("depthwise" if module.groups == module.in_channels > 1 else
                          "grouped" if module.groups > 1 else "conv")
            else:
                assert isinstance(module, nn.Linear)
                want, kinds = 0.02, kinds | {"linear"}
            # the sample std of the ring entries this layer reads, times the multiplier: exactly the
            # weight's std when the layer covers the ring; a small layer samples part of it
            tol = 0.02 if w.numel() >= 100_000 else 0.15 if w.numel() >= 1000 else 0.5
            assert abs(float(w.std()) / want - 1) < tol + abs(ring_std / math.sqrt(2 / REFERENCE_FAN) - 1), \
                (layer.name, tuple(w.shape), float(w.std()), want)
    expected = {"resnet18": {"conv"}, "convnext_atto": {"depthwise", "linear"},
                "efficientnet_b0": {"depthwise", "conv"}, "resnext26ts": {"grouped", "conv"}}[name]
    assert expected <= kinds, kinds
