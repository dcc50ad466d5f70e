"""Magnitude pruning for RPG models: fine-grained on the ring, coarse on the expanded model.

Why two granularities.  The paper (Wang et al., WACV 2023) shows RPG composes with pruning:

* **ring pruning** (:func:`prune_ring`) zeroes the smallest-magnitude ring entries.  Every ring
  entry is reused ⌊T/N⌋–⌈T/N⌉ times, so one zero in the ring zeroes all its copies in the
  generated weights, and the ring-only checkpoint stays the same format (zeros compress well and
  survive safetensors round trips exactly).  The threshold is global across all rings and the
  count is exact: ``k = floor(sparsity · DoF + 0.5)`` entries (round half up), chosen by a
  stable sort on ``|value|`` so ties go to the lower (ring, index) position.  A :class:`RingMask`
  keeps them at zero while fine-tuning, either through gradient hooks (zero gradient → no
  update from SGD/momentum/Adam; weight decay of a zero is zero) or an explicit post-step
  :meth:`RingMask.apply`.
* **channel pruning** (:func:`prune_channels`) works on the *expanded* plain model
  (``rpg_hf.expand``): per conv/linear layer it zeroes the ``floor(sparsity · out + 0.5)`` output
  channels (weight rows and bias entries) of smallest L1 norm.  Channels are zeroed, not removed,
  so the architecture — and the timm / transformers checkpoint format — is unchanged; a
  following norm layer still adds its bias.  The classifier head is skipped by default.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from rpg_hf.reparam import get_generator, head_modules

__all__ = [
    "ChannelPruneReport",
    "RingMask",
    "prune_channels",
    "prune_ring",
    "pruned_count",
]


def pruned_count(sparsity: float, n: int) -> int:
    """Entries pruned for ``sparsity`` of ``n``: ``floor(sparsity · n + 0.5)`` (round half up)."""
    if not 0.0 <= float(sparsity) <= 1.0 or math.isnan(float(sparsity)):
        raise ValueError(f"sparsity must lie in [0, 1], got {sparsity!r}")
    return min(n, int(math.floor(float(sparsity) * n + 0.5)))


# --------------------------------------------------------------------------- ring pruning


@dataclass(eq=False)
class RingMask:
    """Keep-masks (True = kept) of the ring(s) of one generator, and the means to enforce them."""

    generator: Any = field(repr=False)
    masks: list[torch.Tensor] = field(repr=False)  # bool, one per ring, on the ring's device at creation
    _handles: list[Any] = field(default_factory=list, repr=False)

    def __repr__(self) -> str:
        return (f"RingMask(pruned={self.num_pruned:,}/{self.num_total:,} ({100 * self.sparsity:.2f}%), "
                f"rings={len(self.masks)}, hooked={self.hooked})")

    @property
    def num_total(self) -> int:
        return sum(m.numel() for m in self.masks)

    @property
    def num_pruned(self) -> int:
        return sum(int((~m).sum()) for m in self.masks)

    @property
    def sparsity(self) -> float:
        return self.num_pruned / self.num_total if self.num_total else 0.0

    @torch.no_grad()
    def apply(self) -> None:
        """Zero the pruned entries again (call after ``optimizer.step()`` if no hooks are used)."""
        for ring, mask in zip(self.generator.rings, self.masks, strict=True):
            ring.masked_fill_(~mask.to(ring.device).view_as(ring), 0)

    def register_hooks(self) -> RingMask:
        """Gradient hooks that zero the gradient of pruned entries, so optimizers leave them at 0.

        Hooks live on the ring Parameters of this model only: ``copy.deepcopy`` (EMA copies) does
        not carry them, and an optimizer with decoupled weight decay still keeps zeros at zero.
        """
        self.remove_hooks()
        for ring, mask in zip(self.generator.rings, self.masks, strict=True):
            self._handles.append(ring.register_hook(_MaskGrad(mask)))
        return self

    def remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    @property
    def hooked(self) -> bool:
        return bool(self._handles)

    @classmethod
    def from_model(cls, model: Any) -> RingMask:
        """The mask implied by the zeros of a loaded (pruned) ring: zero entries count as pruned."""
        gen = get_generator(model)
        return cls(gen, [ring.detach().ne(0).reshape(-1) for ring in gen.rings])


class _MaskGrad:
    """Tensor hook: multiply the gradient by the keep-mask (mask cached per device)."""

    def __init__(self, mask: torch.Tensor):
        self.mask = mask.reshape(-1)

    def __call__(self, grad: torch.Tensor) -> torch.Tensor:
        if self.mask.device != grad.device:
            self.mask = self.mask.to(grad.device)
        return grad.masked_fill(~self.mask.view_as(grad), 0)


def prune_ring(model: Any, sparsity: float, *, hooks: bool = True) -> RingMask:
    """Zero the ``pruned_count(sparsity, DoF)`` smallest-|value| ring entries, globally over rings.

    Ties (equal magnitudes, e.g. entries already zero) are broken by position in the concatenated
    rings, so exactly that many entries are pruned.  With ``hooks`` (default) gradient hooks keep
    the pruned entries at zero during fine-tuning; remove them with ``mask.remove_hooks()``.
    """
    gen = get_generator(model)
    rings = list(gen.rings)
    sizes = [r.numel() for r in rings]
    total = sum(sizes)
    k = pruned_count(sparsity, total)
    with torch.no_grad():
        mags = torch.cat([r.detach().reshape(-1).abs().float().cpu() for r in rings])
        keep = torch.ones(total, dtype=torch.bool)
        if k:
            order = torch.sort(mags, stable=True).indices  # stable: ties keep index order
            keep[order[:k]] = False
        masks = [m.to(r.device) for m, r in zip(keep.split(sizes), rings, strict=True)]
    mask = RingMask(gen, masks)
    mask.apply()
    if hooks:
        mask.register_hooks()
    return mask


# --------------------------------------------------------------------------- channel pruning


@dataclass
class ChannelPruneReport:
    """What :func:`prune_channels` zeroed: per layer, the output channels (indices) and counts."""

    sparsity: float
    layers: list[dict[str, Any]]  # name, type, out_channels, pruned, indices

    @property
    def total_channels(self) -> int:
        return sum(row["out_channels"] for row in self.layers)

    @property
    def total_pruned(self) -> int:
        return sum(row["pruned"] for row in self.layers)

    @property
    def zeroed_params(self) -> int:
        return sum(row["zeroed_params"] for row in self.layers)

    @torch.no_grad()
    def apply(self, model: nn.Module) -> None:
        """Zero the same channels again (e.g. after a fine-tuning step)."""
        for row in self.layers:
            _zero_rows(model.get_submodule(row["name"]), row["indices"])

    def to_dict(self) -> dict[str, Any]:
        return {
            "sparsity": self.sparsity,
            "total_channels": self.total_channels,
            "total_pruned": self.total_pruned,
            "zeroed_params": self.zeroed_params,
            "layers": [dict(row) for row in self.layers],
        }

    def __str__(self) -> str:
        lines = [f"{'layer':<40} {'type':<8} {'out':>6} {'pruned':>7}"]
        for row in self.layers:
            lines.append(f"{row['name']:<40.40} {row['type']:<8} {row['out_channels']:>6} {row['pruned']:>7}")
        lines.append(f"total: {self.total_pruned}/{self.total_channels} channels, "
                     f"{self.zeroed_params:,} parameters zeroed")
        return "\n".join(lines)


def _prunable(module: nn.Module) -> bool:
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return False  # output channels live in dim 1 there; not supported
    weight = getattr(module, "weight", None)
    return isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)) and isinstance(weight, torch.Tensor)


@torch.no_grad()
def _zero_rows(module: nn.Module, indices: Sequence[int]) -> int:
    if not indices:
        return 0
    idx = torch.as_tensor(list(indices), dtype=torch.long, device=module.weight.device)
    module.weight.index_fill_(0, idx, 0)
    zeroed = len(indices) * math.prod(module.weight.shape[1:])
    bias = getattr(module, "bias", None)
    if isinstance(bias, torch.Tensor):
        bias.index_fill_(0, idx.to(bias.device), 0)
        zeroed += len(indices)
    return zeroed


def _select(model: nn.Module, modules: Iterable[str | nn.Module] | str | None, skip_head: bool):
    named = list(model.named_modules())
    if modules is None:
        skip = head_modules(model) if skip_head else set()
        return [(n, m) for n, m in named if _prunable(m) and m not in skip]
    if isinstance(modules, str):  # one regex on module names
        pattern = re.compile(modules)
        return [(n, m) for n, m in named if _prunable(m) and pattern.search(n)]
    wanted = list(modules)
    by_name = dict(named)
    out = []
    for item in wanted:
        if isinstance(item, str):
            if item not in by_name:
                raise ValueError(f"no module named {item!r} in {type(model).__name__}")
            name, module = item, by_name[item]
        else:
            name = next((n for n, m in named if m is item), None)
            if name is None:
                raise ValueError(f"module {type(item).__name__} is not part of {type(model).__name__}")
            module = item
        if not _prunable(module):
            raise ValueError(f"{name!r} ({type(module).__name__}) is not a conv/linear layer with a weight")
        out.append((name, module))
    return out


@torch.no_grad()
def prune_channels(
    plain_model: nn.Module,
    sparsity: float,
    *,
    modules: Iterable[str | nn.Module] | str | None = None,
    skip_head: bool = True,
) -> ChannelPruneReport:
    """Zero the lowest-L1 output channels of each conv/linear layer of an expanded (plain) model.

    Each selected layer loses exactly ``pruned_count(sparsity, out_channels)`` channels: weight
    rows ``weight[c]`` and ``bias[c]`` set to zero, chosen by the L1 norm of ``weight[c]`` with
    ties broken by channel index.  ``modules``: None for every conv/linear layer except the
    classifier head (unless ``skip_head=False``), a regex on module names, or a list of names /
    module objects.  A re-parameterized model is refused: its weights are generated from the
    ring, so prune ``rpg_hf.expand(model)`` instead (or use :func:`prune_ring`).
    """
    if isinstance(getattr(plain_model, "rpg", None), nn.Module) and hasattr(plain_model.rpg, "rings"):
        raise ValueError("prune_channels works on the expanded model: call rpg_hf.expand(model) first")
    pruned_count(sparsity, 1)  # validates the range
    rows = []
    for name, module in _select(plain_model, modules, skip_head):
        weight = module.weight
        out_channels = weight.shape[0]
        k = pruned_count(sparsity, out_channels)
        norms = weight.detach().reshape(out_channels, -1).abs().double().sum(dim=1).cpu()
        indices = sorted(torch.sort(norms, stable=True).indices[:k].tolist())
        zeroed = _zero_rows(module, indices)
        rows.append({
            "name": name, "type": type(module).__name__, "out_channels": out_channels,
            "pruned": k, "indices": indices, "zeroed_params": zeroed,
        })
    return ChannelPruneReport(float(sparsity), rows)
