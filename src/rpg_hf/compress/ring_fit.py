"""The least-squares ring of target weights, and the report of how well it reproduces them.

Generation is linear in the ring, ``W_l[j] = m_l · s_l(j) · ring[(o_l + π_l(j)) mod N]``, so the
ring minimising ``Σ_l λ_l ||W_l(ring) − W_l||²`` decouples per entry:
``ring[k] = Σ λ·m·s·w / Σ λ·m²`` over the weight entries ``w`` that map to entry ``k`` (computed
in float64 on the CPU from the pinned integer construction).  :func:`fit_rings` computes it for a
generator; :class:`FoldReport` holds the per-layer relative reconstruction errors that
:func:`rpg_hf.compress.fold.fold_into` returns.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from rpg_hf.core.reference import layer_indices
from rpg_hf.reparam import get_generator

__all__ = ["WEIGHTINGS", "FoldReport", "fit_rings", "fold_report"]

#: Named objectives of :func:`fit_rings` (besides per-layer floats).
WEIGHTINGS = ("uniform", "relative")


@dataclass(frozen=True)
class FoldReport:
    """How well a ring reproduces the weights it was folded from (per layer and overall)."""

    rows: list[dict]
    dof: int
    ring_sizes: list[int]
    unused_ring_entries: int
    weighting: str = "uniform"

    @property
    def generated_params(self) -> int:
        return sum(r["numel"] for r in self.rows)

    @property
    def reuse(self) -> float:
        """Generated weights per ring entry (T/N)."""
        return self.generated_params / self.dof

    @property
    def rel_error(self) -> float:
        """Overall relative reconstruction error sqrt(Σ||W_fold − W||² / Σ||W||²)."""
        den = sum(r["norm"] ** 2 for r in self.rows)
        num = sum((r["rel_error"] * r["norm"]) ** 2 for r in self.rows)
        return math.sqrt(num / den) if den > 0 else 0.0

    @property
    def energy_kept(self) -> float:
        """1 − rel_error²: the share of the weights' squared norm the folded ring reproduces."""
        return 1.0 - self.rel_error**2

    @property
    def exact(self) -> bool:
        """The folded weights equal the source weights to float32 rounding."""
        return self.rel_error < 1e-6

    def totals(self) -> dict:
        return {
            "dof": self.dof, "rings": list(self.ring_sizes), "generated_params": self.generated_params,
            "reuse": self.reuse, "rel_error": self.rel_error, "energy_kept": self.energy_kept,
            "unused_ring_entries": self.unused_ring_entries, "exact": self.exact, "weighting": self.weighting,
        }

    def to_dict(self) -> dict:
        return {**self.totals(), "layers": [dict(r) for r in self.rows]}

    def __str__(self) -> str:
        head = f"{'layer':<40} {'shape':<20} {'numel':>10} {'ring':>4} {'mult':>8} {'rel. error':>10}"
        lines = [head, "-" * len(head)]
        for r in self.rows:
            shape = "x".join(map(str, r["shape"]))
            lines.append(f"{r['name']:<40.40} {shape:<20} {r['numel']:>10,} {r['ring']:>4} "
                         f"{r['multiplier']:>8.3f} {r['rel_error']:>10.4f}")
        lines += [
            "-" * len(head),
            f"DoF (ring entries)      {self.dof:>14,}   rings: {len(self.ring_sizes)}"
            + (f"   unused entries: {self.unused_ring_entries:,}" if self.unused_ring_entries else ""),
            f"generated parameters    {self.generated_params:>14,}   reuse T/N = {self.reuse:,.2f}",
            f"relative error (all)    {self.rel_error:>14.4f}   energy kept = {100 * self.energy_kept:.2f}%"
            + ("   (exact)" if self.exact else "") + f"   fit: {self.weighting} least squares",
        ]
        return "\n".join(lines)


def _layer_weights(weights: list[torch.Tensor], weighting) -> list[float]:
    """Per-layer weights λ_l of the least-squares objective Σ_l λ_l ||W_l(ring) − W_l||²."""
    if weighting is None or weighting == "uniform":
        return [1.0] * len(weights)
    if weighting == "relative":  # every layer's *relative* error counts the same: λ_l = 1 / ||W_l||²
        out = []
        for w in weights:
            norm2 = float(w.detach().double().pow(2).sum())
            out.append(1.0 / norm2 if norm2 > 0 else 0.0)
        return out
    if isinstance(weighting, str):
        raise ValueError(f"unknown fold weighting {weighting!r}; expected one of {WEIGHTINGS} or per-layer floats")
    out = [float(v) for v in weighting]
    if len(out) != len(weights) or any(not v >= 0 for v in out):
        raise ValueError(f"fold weighting: expected {len(weights)} non-negative per-layer weights, got {out}")
    return out


@torch.no_grad()
def fit_rings(generator, weights: Iterable[torch.Tensor], weighting=None) -> tuple[list[torch.Tensor], int]:
    """Least-squares rings for target ``weights`` (one per generated layer, in recorded order).

    ``weighting`` chooses the objective ``Σ_l λ_l ||W_l(ring) − W_l||²``: ``None``/``"uniform"``
    (λ = 1, the plain reconstruction error), ``"relative"`` (λ_l = 1/||W_l||²: every layer's relative
    error counts the same, so small layers are not drowned by large ones), or one float per layer.
    The solution is ``ring[k] = Σ λ·m·s·w / Σ λ·m²``.  Returns the rings (float32, CPU) and the number
    of ring entries no weight maps to (set to 0).
    """
    weights = list(weights)
    if len(weights) != len(generator.layers):
        raise ValueError(f"{len(weights)} target weights for {len(generator.layers)} generated layers")
    lambdas = _layer_weights(weights, weighting)
    sizes = list(generator.ring_sizes)
    num = [torch.zeros(n, dtype=torch.float64) for n in sizes]
    den = [torch.zeros(n, dtype=torch.float64) for n in sizes]
    for position, w in enumerate(weights):
        r, i = generator.slot_of[position]
        slot = generator.slots[r][i]
        if tuple(w.shape) != tuple(slot.shape):
            raise ValueError(f"layer {generator.layers[position].name!r}: target shape {tuple(w.shape)}, "
                             f"generated shape {tuple(slot.shape)}")
        idx, neg = layer_indices(slot, sizes[r])
        w = w.detach().reshape(-1).to(device="cpu", dtype=torch.float64)
        m, lam = float(slot.multiplier), lambdas[position]
        num[r].index_add_(0, idx, torch.where(neg, -w, w) * (lam * m))
        den[r].index_add_(0, idx, torch.full_like(w, lam * m * m))
    rings, unused = [], 0
    for nr, dr in zip(num, den, strict=True):
        used = dr > 0
        unused += int((~used).sum())
        rings.append(torch.where(used, nr / torch.where(used, dr, 1.0), 0.0).float())
    return rings, unused


def fold_report(backbone: nn.Module, targets: list[torch.Tensor], unused: int, weighting) -> FoldReport:
    """The :class:`FoldReport` of an RPG ``backbone`` whose rings were fitted to ``targets``."""
    gen = get_generator(backbone)
    folded = gen.generate_all()
    rows = []
    for layer, (r, _), w, g in zip(gen.layers, gen.slot_of, targets, folded, strict=True):
        w64 = w.detach().to(device="cpu", dtype=torch.float64).reshape(-1)
        g64 = g.detach().to(device="cpu", dtype=torch.float64).reshape(-1)
        norm = float(w64.norm())
        err = float((g64 - w64).norm())
        rows.append({"name": layer.name, "shape": list(layer.shape), "numel": layer.numel, "ring": r,
                     "multiplier": layer.multiplier, "norm": norm,
                     "rel_error": err / norm if norm > 0 else (0.0 if err == 0 else math.inf)})
    name = weighting if isinstance(weighting, str) else ("uniform" if weighting is None else "per-layer")
    return FoldReport(rows, gen.spec.dof, list(gen.ring_sizes), unused, name)
