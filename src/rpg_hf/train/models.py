"""The models the recipes train: an RPG model or its vanilla baseline from one config, and the
one rule for a width-matched (narrowed) vanilla network.

:func:`build_model` makes the RPG model (:class:`rpg_hf.RPGForImageClassification`) or the
vanilla baseline from the same :class:`rpg_hf.RPGConfig` — the baseline is
``build_backbone(config)`` without the ring — so a side-by-side comparison differs in nothing but
the re-parameterization.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

# transformers ViT presets (patch 16): --arch vit_b16 etc. select the transformers ViT backbone.
VIT_PRESETS: dict[str, dict[str, int]] = {
    "vit_ti16": dict(hidden_size=192, num_hidden_layers=12, num_attention_heads=3, intermediate_size=768, patch_size=16),
    "vit_s16": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536, patch_size=16),
    "vit_b16": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, patch_size=16),
    "vit_l16": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                    patch_size=16),
}
VIT_ALIASES = {"vit-b16": "vit_b16", "vit-b/16": "vit_b16", "vit_base_16": "vit_b16", "vit-s16": "vit_s16",
               "vit-ti16": "vit_ti16", "vit-l16": "vit_l16"}


def is_vit(arch: str, vit_config: Mapping[str, Any] | None = None) -> bool:
    """Whether ``arch`` selects the transformers ViT backbone (a preset name or an explicit config)."""
    return vit_config is not None or VIT_ALIASES.get(arch.lower(), arch.lower()) in VIT_PRESETS


def vit_config_for(arch: str, image_size: int, overrides: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """The ``ViTConfig`` dict for a preset (``vit_b16``...) updated by ``overrides``; None for CNNs."""
    name = VIT_ALIASES.get(arch.lower(), arch.lower())
    if name not in VIT_PRESETS and overrides is None:
        return None
    from transformers import ViTConfig

    values: dict[str, Any] = {**VIT_PRESETS.get(name, {}), "image_size": image_size, **(overrides or {})}
    return ViTConfig(**values).to_dict()


def build_model(
    method: str,
    arch: str,
    *,
    num_labels: int,
    id2label: Mapping[int, str] | None = None,
    dof: int = 45_000,
    seed: int = 0,
    scope: str = "global",
    model_args: Mapping[str, Any] | None = None,
    vit_config: Mapping[str, Any] | None = None,
    image_size: int = 224,
    crop_pct: float = 0.875,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    **spec_fields: Any,
) -> nn.Module:
    """The RPG model (``method="rpg"``) or its vanilla baseline (``"vanilla"``) for ``arch``.

    ``arch`` is a timm architecture (``model_args`` go to ``timm.create_model``) or a ViT preset
    (``vit_b16``...; ``vit_config`` overrides its fields) for the transformers ViT backbone.
    The vanilla model is the same backbone built from the same config, without the ring: a timm
    model or a ``ViTForImageClassification``.  ``spec_fields`` are further ``RPGConfig`` fields
    (``permute``, ``sign_flip``, ``exclude``...).
    """
    from rpg_hf import RPGConfig, RPGForImageClassification
    from rpg_hf.hf.modeling_rpg import build_backbone

    if method not in ("rpg", "vanilla"):
        raise ValueError(f"unknown method {method!r}; expected 'rpg' or 'vanilla'")
    id2label = {int(k): str(v) for k, v in (id2label or {i: str(i) for i in range(num_labels)}).items()}
    vit = vit_config_for(arch, image_size, vit_config)
    common = dict(num_labels=num_labels, id2label=id2label, label2id={v: k for k, v in id2label.items()}, dof=dof,
                  seed=seed, scope=scope, image_size=image_size, crop_pct=crop_pct,
                  image_mean=list(mean) if mean else None, image_std=list(std) if std else None, **spec_fields)
    if vit is not None:
        config = RPGConfig(backbone="vit", architecture=VIT_ALIASES.get(arch.lower(), arch), vit_config=vit, **common)
    else:
        config = RPGConfig(backbone="timm", architecture=arch, model_args=dict(model_args or {}) or None, **common)
    if method == "rpg":
        return RPGForImageClassification(config)
    return build_backbone(config)


def logits_of(output: Any) -> torch.Tensor:
    """Logits from a timm model (a tensor) or a transformers model (an output with ``.logits``)."""
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "logits"):
        return output.logits
    return output[0]


def model_summary(model: nn.Module) -> dict[str, Any]:
    """Parameter counts: DoF / trainable / original / compression (RPG) or plain totals (vanilla)."""
    from rpg_hf.reparam import get_generator
    from rpg_hf.reparam.dof import dof_table

    backbone = getattr(model, "backbone", model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    try:
        get_generator(backbone)
    except ValueError:
        total = sum(p.numel() for p in model.parameters())
        return {"method": "vanilla", "dof": total, "trainable_params": trainable, "original_params": total,
                "compression": 1.0}
    totals = dof_table(backbone).totals()
    return {"method": "rpg", "dof": totals["dof"], "trainable_params": trainable,
            "original_params": totals["original_params"], "generated_params": totals["generated_params"],
            "free_params": totals["free_params"], "compression": totals["compression"]}


# ---------- the width-matched vanilla network


def narrowed_channels(width: int) -> list[int]:
    """Stage widths ending in ``width``, each half the next (ResNet-18's 64/128/256/512 is ``width=512``)."""
    w = int(width)
    return [max(1, round(w / 8)), max(1, round(w / 4)), max(1, round(w / 2)), w]


def narrowed_model_args(width: int, in_chans: int) -> dict[str, Any]:
    """``timm.create_model`` kwargs of a ResNet narrowed to last-stage width ``width`` (stem as stage 1)."""
    channels = narrowed_channels(width)
    return {"in_chans": int(in_chans), "channels": channels, "stem_width": channels[0]}


def vanilla_params(arch: str, width: int, num_classes: int, in_chans: int = 1) -> int:
    """Parameter count of the plain narrowed ``arch`` (all trainable), built on the meta device."""
    import timm

    import rpg_hf  # noqa: F401  (registers the CIFAR-style ResNets)

    model = timm.create_model(arch, pretrained=False, num_classes=num_classes, device="meta",
                              **narrowed_model_args(width, in_chans))
    return int(sum(p.numel() for p in model.parameters()))


def match_vanilla_width(arch: str, target_params: int, num_classes: int, in_chans: int = 1) -> tuple[int, int]:
    """The one width-matching rule: the last-stage width ``w`` whose narrowed ``arch``
    (:func:`narrowed_channels`) has the parameter count closest to ``target_params`` — an RPG
    model's trainable parameters (ring + free tensors) for an equal-DoF baseline.

    Parameters grow with ``w``, so a bisection on ``[8, 512]`` finds the two neighbours of the
    target; the closer one wins.  Returns ``(w, params)``.
    """
    lo, hi = 8, 512
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if vanilla_params(arch, mid, num_classes, in_chans) <= target_params:
            lo = mid
        else:
            hi = mid
    options = [(abs(vanilla_params(arch, w, num_classes, in_chans) - target_params), w) for w in (lo, hi)]
    w = min(options)[1]
    return w, vanilla_params(arch, w, num_classes, in_chans)
