"""The packed per-ring layer table shared by the CPU and Triton kernels.

A :class:`RingPlan` is O(layers): per layer its size ``n``, Feistel grid ``(a, b)`` (of the ``n``
weights in generator version 1, of the ``floor(n / 32)`` blocks in version 2), window offset
``o = start mod N``, flags (permute, sign flip, version 2) and the five 32-bit sub-keys, plus the
float32 multiplier.
It is *not* an index table: every index and sign is recomputed from it on the fly.  Plans are
cached per (slots, ring size); the device copies of the table are cached on the plan.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

from rpg_hf.core.construction import BLOCK, grid_shape
from rpg_hf.core.reference import LayerSlot

META_WIDTH = 10  # n, a, b, o, flags, k0, k1, k2, k3, k_sign
FLAG_PERMUTE = 1
FLAG_SIGN = 2
FLAG_BLOCKS = 4  # generator version 2: blocks of BLOCK weights (a, b: the grid of the n // BLOCK blocks)


class RingPlan:
    """Everything a kernel needs to generate (or fold back) all layers of one ring."""

    def __init__(self, slots: tuple[LayerSlot, ...], ring_size: int):
        if ring_size < 1:
            raise ValueError(f"ring size must be positive, got {ring_size}")
        self.slots = slots
        self.ring_size = ring_size
        self.shapes = tuple(tuple(s.shape) for s in slots)
        self.numels = tuple(s.numel for s in slots)
        self.total = sum(self.numels)
        rows = []
        for s in slots:
            blocks = s.version == 2
            a, b = grid_shape(max(1, s.numel // BLOCK) if blocks else s.numel)
            # a version-2 layer of fewer than two full blocks has nothing to permute
            permute = s.permute and (s.numel >= 2 * BLOCK if blocks else True)
            flags = (FLAG_PERMUTE if permute else 0) | (FLAG_SIGN if s.sign_flip else 0) | (FLAG_BLOCKS if blocks else 0)
            rows.append([s.numel, a, b, s.start % ring_size, flags, *s.keys.rounds, s.keys.sign])
        self.meta_rows = rows
        self.meta = torch.tensor(rows, dtype=torch.int64).reshape(len(slots), META_WIDTH)
        self.multipliers = tuple(float(s.multiplier) for s in slots)  # float32-exact values
        self._mult: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}
        self._device: dict[tuple[str, torch.device], torch.Tensor] = {}

    @property
    def num_layers(self) -> int:
        return len(self.slots)

    def mult(self, dtype: torch.dtype, device: torch.device | str = "cpu") -> torch.Tensor:
        """The multipliers as a ``dtype`` tensor on ``device`` (cached; exact in float32)."""
        key = (dtype, torch.device(device))
        t = self._mult.get(key)
        if t is None:
            t = torch.tensor(self.multipliers, dtype=dtype).to(key[1])
            self._mult[key] = t
        return t

    def cached(self, name: str, device: torch.device, build) -> torch.Tensor:
        """A small per-device table (built once by ``build()`` and moved to ``device``)."""
        key = (name, device)
        t = self._device.get(key)
        if t is None:
            t = build().to(device)
            self._device[key] = t
        return t

    def max_turns(self) -> int:
        """Largest number of times one layer's window goes round the ring (plus one)."""
        n_ring = self.ring_size
        return max(((row[3] + row[0] + n_ring - 1) // n_ring for row in self.meta_rows), default=1)


@functools.lru_cache(maxsize=256)
def _plan(slots: tuple[LayerSlot, ...], ring_size: int) -> RingPlan:
    return RingPlan(slots, ring_size)


def get_plan(slots: Sequence[LayerSlot], ring_size: int) -> RingPlan:
    """The (cached) plan of ``slots`` on a ring of ``ring_size`` entries."""
    return _plan(tuple(slots), int(ring_size))

