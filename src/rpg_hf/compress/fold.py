"""Fold a pretrained network into a ring: start RPG from the weights people already have.

Given a plain timm CNN or transformers ViT with trained weights, :func:`fold` returns the RPG
model whose ring is the **least-squares fit** of those weights under the pinned construction.
Generation is linear in the ring, ``W_l[j] = m_l · s_l(j) · ring[(o_l + π_l(j)) mod N]``, so the
ring that minimises ``Σ_l ||W_l(ring) − W_l||²`` decouples per entry:

    ring[k] = Σ m·s·w / Σ m²        over the weight entries w that map to ring entry k

— the multiplier- and sign-weighted mean of the weights sharing that entry.  The numerator is the
adjoint of generation applied to the target weights (what backward computes for a gradient equal
to the weights), the denominator the same adjoint applied to the constant ``m``.  Ring entries no
weight maps to (DoF larger than the generated weights) get 0, the minimum-norm solution.
Everything is computed in float64 on the CPU from the pinned integer construction, so the folded
ring is the same on every machine.  The free tensors (stem, norms, biases, head, buffers) are
copied unchanged.

The fit is exact when every ring entry receives at most one weight — DoF ≥ generated weights —
and, beyond that, whenever the weights already are a ring expansion of the same construction
(folding ``expand(rpg_model)`` gives its ring back).  Otherwise the report says how much is lost:
per layer and overall, the relative reconstruction error ``||W_fold − W|| / ||W||``.  For weights
with no structure, folding ``T`` weights into ``N`` entries keeps about ``N/T`` of their energy
(error ≈ sqrt(1 − N/T)): folding is a starting point for fine-tuning, not a compressor on its own.

The pieces live beside this module: the fit and its report in :mod:`.ring_fit`, reading the
source network in :mod:`.source_network`, the BatchNorm re-estimate in :mod:`.batchnorm`; their
public names are importable from here.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from rpg_hf.compress.batchnorm import recalibrate_batchnorm
from rpg_hf.compress.ring_fit import WEIGHTINGS, FoldReport, fit_rings, fold_report
from rpg_hf.compress.source_network import config_from_model, is_rpg, load_source, plain_network, rpg_backbone
from rpg_hf.reparam import GENERATOR_ATTR, get_generator, identity, reparameterize, select_targets
from rpg_hf.spec import RPGSpec

__all__ = [
    "WEIGHTINGS",
    "FoldReport",
    "config_from_model",
    "fit_rings",
    "fold",
    "fold_into",
    "load_source",
    "plain_network",
    "recalibrate_batchnorm",
]


def _ring_keys(backbone: nn.Module) -> list[str]:
    """State-dict names of the generator's rings, in ring order."""
    gen = get_generator(backbone)
    index = {id(p): i for i, p in enumerate(gen.rings)}
    keys: list[str | None] = [None] * len(gen.rings)
    for name, value in backbone.state_dict(keep_vars=True).items():
        if id(value) in index:
            keys[index[id(value)]] = name
    if any(k is None for k in keys):
        raise RuntimeError("a ring of the generator is missing from the model's state_dict")
    return keys  # type: ignore[return-value]


def _match(backbone: nn.Module, source_sd: Mapping[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """(free keys, generated keys) of the RPG backbone, checked against the source's state dict."""
    gen = get_generator(backbone)
    ring_keys = set(_ring_keys(backbone))
    target_sd = backbone.state_dict()
    # the ring holder's construction identity is the RPG model's own: no plain network has it
    own = {k for k in target_sd if k.endswith(f"{GENERATOR_ATTR}.{identity.KEY}")}
    free = [k for k in target_sd if k not in ring_keys and k not in own]
    generated = [f"{layer.name}.weight" for layer in gen.layers]
    expected = {k: tuple(target_sd[k].shape) for k in free}
    expected.update({f"{layer.name}.weight": tuple(layer.shape) for layer in gen.layers})
    missing = [k for k in expected if k not in source_sd]
    unexpected = [k for k in source_sd if k not in expected]
    wrong = [(k, tuple(source_sd[k].shape), s) for k, s in expected.items()
             if k in source_sd and tuple(source_sd[k].shape) != s]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} tensor(s) of the RPG model are not in the source (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} tensor(s) of the source have no place in the RPG model "
                         f"(e.g. {unexpected[:3]})")
        if wrong:
            k, got, want = wrong[0]
            parts.append(f"{len(wrong)} shape mismatch(es) (e.g. {k!r}: source {got}, RPG model {want})")
        raise ValueError(f"architecture mismatch: the source network does not fit this RPG "
                         f"{type(backbone).__name__}: " + "; ".join(parts))
    return free, generated


def fold_into(rpg_model: nn.Module, source: nn.Module, weighting=None) -> FoldReport:
    """Overwrite ``rpg_model`` (re-parameterized module or RPG HF model) with ``source``'s weights.

    The ring(s) become the least-squares fit of the source's generated weights; every free tensor
    (norms, biases, stem, head, buffers) is copied.  ``source`` is a plain network of the same
    architecture (an RPG model is expanded first, so this also refolds at another DoF).
    ``weighting`` is :func:`fit_rings`'s (default: the plain least-squares fit).  Raises
    ``ValueError`` naming the first differences when the architectures do not match.
    """
    backbone = rpg_backbone(rpg_model)
    gen = get_generator(backbone)
    plain = plain_network(source)
    source_sd = plain.state_dict()
    free, generated = _match(backbone, source_sd)
    targets = [source_sd[k] for k in generated]
    rings, unused = fit_rings(gen, targets, weighting)
    new_sd = {k: source_sd[k] for k in free}
    new_sd.update(dict(zip(_ring_keys(backbone), rings, strict=True)))
    backbone.load_state_dict(new_sd, strict=True)
    if hasattr(gen, "invalidate_cache"):
        gen.invalidate_cache()
    return fold_report(backbone, targets, unused, weighting)


def fold(source: nn.Module, target, *, weighting=None, **spec_fields: Any) -> tuple[nn.Module, FoldReport]:
    """Fold ``source``'s trained weights into a ring; returns ``(rpg_model, report)``.

    ``target`` says which RPG model to build:

    * an ``int`` (the DoF) or an :class:`RPGSpec` — a re-parameterized copy of ``source`` (same
      class: a timm model or a ``ViTForImageClassification``); ``spec_fields`` complete the spec
      when an int is given (``seed=``, ``scope=``, ``permute=``...);
    * an :class:`rpg_hf.RPGConfig` — a fresh :class:`rpg_hf.RPGForImageClassification` (saves
      ring-only with ``save_pretrained``); :func:`config_from_model` makes one from ``source``;
    * an existing RPG model — folded into in place (see :func:`fold_into`).

    ``weighting``: the least-squares objective (:func:`fit_rings`; default plain).  ``source``
    itself is never modified.
    """
    from rpg_hf.hf.configuration_rpg import RPGConfig
    from rpg_hf.hf.modeling_rpg import RPGForImageClassification

    if isinstance(target, bool) or (isinstance(target, int) and not isinstance(target, RPGSpec)):
        if target <= 0:
            raise ValueError(f"fold: the DoF (ring size) must be a positive int, got {target}")
        target = RPGSpec(dof=int(target), **spec_fields)
    elif spec_fields:
        raise TypeError(f"fold: spec fields {sorted(spec_fields)} only apply when the target is a DoF")
    if isinstance(target, RPGSpec):
        plain = plain_network(source)
        try:
            select_targets(plain, target)
        except ValueError as err:
            raise ValueError(f"nothing to fold: {err}") from err
        model = reparameterize(copy.deepcopy(plain), target)
    elif isinstance(target, RPGConfig):
        model = RPGForImageClassification(target)
    elif isinstance(target, nn.Module) and is_rpg(target):
        model = target
    else:
        raise TypeError(f"fold: target must be a DoF, an RPGSpec, an RPGConfig or an RPG model, "
                        f"got {type(target).__name__}")
    model.train(source.training)
    return model, fold_into(model, source, weighting)
