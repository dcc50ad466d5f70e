"""The opt-in, bounded index cache of the CPU kernels (default: 0 bytes, nothing is kept).

Why it exists: on the CPU the four Feistel rounds and the sign hash cost more per element than
reading the ring (~2.5 of ~4.5 ns per element per thread on the benchmark machine), and a
training step pays them twice (generation, then the gradient fold).  With a budget, the kernels
store each layer's *codes* once — ``code[j] = ring index of element j | s(j) << 31``, 4 bytes per
generated weight — and read them on every later forward and backward.  A code depends only on
the layer's slot and the ring size, never on the ring's values, so a cached layer stays valid
when the ring changes (optimizer steps, ``load_state_dict``, EMA).  The result is bit-identical
to recomputing: same values, same summation order (tests pin this).

It is *not* part of a checkpoint and never leaves the process: the seed still defines
everything (DESIGN.md §2).  The cost is memory: 4 bytes per generated weight of every cached
layer (a ResNet-18: 11.2M weights, 44.6 MB).  Admission is first come, first kept: a layer is
cached when its codes fit in what is left of the budget, and nothing is evicted (eviction would
rebuild tables every step once a model outgrows the budget); :func:`clear` empties it.

``RPG_HF_INDEX_CACHE_MB`` (environment, default 0) or :func:`set_budget_mb` sets the budget.
"""

from __future__ import annotations

import os
import threading

import torch

from rpg_hf.ops.plan import RingPlan

ENV = "RPG_HF_INDEX_CACHE_MB"
CODE_BYTES = 4  # one uint32 per generated weight

_lock = threading.Lock()
_codes: dict[tuple[tuple[int, ...], int], torch.Tensor] = {}  # (meta row, ring size) -> int32 codes
_used = 0
_budget_override: int | None = None


def set_budget_mb(mb: float | None) -> None:
    """Cache at most ``mb`` MiB of codes from now on (``None``: back to ``$RPG_HF_INDEX_CACHE_MB``).

    Lowering the budget below what is held empties the cache.
    """
    global _budget_override
    if mb is not None and (mb != mb or mb < 0):  # NaN or negative
        raise ValueError(f"index cache budget must be a non-negative number of MiB, got {mb!r}")
    _budget_override = None if mb is None else int(mb * 2**20)
    if _budget_override is not None and _used > _budget_override:
        clear()


def budget_bytes() -> int:
    """The budget in bytes (0: the cache is off)."""
    if _budget_override is not None:
        return _budget_override
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return 0
    try:
        mb = float(raw)
    except ValueError:
        raise ValueError(f"{ENV}={raw!r}: expected a number of MiB (0 turns the cache off)") from None
    if mb != mb or mb < 0:
        raise ValueError(f"{ENV}={raw!r}: expected a non-negative number of MiB")
    return int(mb * 2**20)


def used_bytes() -> int:
    return _used


def clear() -> None:
    """Drop every cached table."""
    global _used
    with _lock:
        _codes.clear()
        _used = 0


def lookup(plan: RingPlan, build) -> list[torch.Tensor | None] | None:
    """Per layer of ``plan`` its cached codes (None: computed on the fly); None when the cache is off.

    ``build(plan, outs)`` fills the given int32 tensors (None entries skipped) with the codes of
    the layers that are admitted now.
    """
    global _used
    budget = budget_bytes()
    if budget <= 0:
        return None
    keys = [(tuple(row), plan.ring_size) for row in plan.meta_rows]
    with _lock:
        found = [_codes.get(k) for k in keys]
        new: list[torch.Tensor | None] = [None] * len(keys)
        pending: set = set()
        room = budget - _used
        for i, (k, n) in enumerate(zip(keys, plan.numels, strict=True)):
            if found[i] is None and k not in pending and n * CODE_BYTES <= room:
                new[i] = torch.empty(n, dtype=torch.int32)
                pending.add(k)
                room -= n * CODE_BYTES
        if pending:
            build(plan, new)
            for k, t in zip(keys, new, strict=True):
                if t is not None:
                    _codes[k] = t
                    _used += t.numel() * CODE_BYTES
            found = [_codes.get(k) for k in keys]
        return found
