"""Fused generation kernels for RPG rings (issue 6).

``expand(ring, slots, dtype)`` generates every layer of one ring with the fastest available
backend and is differentiable w.r.t. the ring; :func:`rpg_hf.ring.expand_ring` calls it.  The
pure-PyTorch code in :mod:`rpg_hf.ring` stays the reference: the kernels reproduce its forward bit
for bit and its gradient to float32 rounding.  See :mod:`.ops` for the dispatch rules
(``RPG_HF_BACKEND``), :mod:`.cpu` for the C kernels and :mod:`.triton_ring` for the GPU kernels.
"""

from .ops import BACKEND_ENV, BACKENDS, expand, requested_backend, select_backend
from .plan import RingPlan, get_plan

__all__ = ["BACKENDS", "BACKEND_ENV", "RingPlan", "expand", "get_plan", "requested_backend", "select_backend"]
