"""Generation kernels for RPG rings and the autograd around them.

``expand_ring(ring, slots, dtype)`` generates every layer of one ring with the fastest available
backend and is differentiable w.r.t. the ring; :class:`RingGradient` is the autograd behind a
model's weights in training.  The pure-PyTorch code in :mod:`rpg_hf.core.reference` stays the reference
(this package imports it, never the other way round): the kernels reproduce its weights bit for
bit and its ring gradient to float32 rounding.  No index table is ever stored: indices and signs
are recomputed from the packed O(layers) table of a :class:`RingPlan` (with generator version 2,
one Feistel evaluation and one hash per block of 32 weights, then contiguous reads: memory speed).

* :mod:`.dispatch` — dispatch, the eager autograd node, the ``rpg_hf::expand_ring`` custom op
  (``torch.compile`` sees no graph break inside the generator);
* :mod:`.cpu` / ``rpg_cpu.c`` — C kernels for CPU rings (built on first use, cached);
* :mod:`.triton_ring` — Triton kernels for CUDA rings (one launch per ring forward and backward);
* :mod:`.plan` — the packed per-ring layer table both kernels read.

Environment:

``RPG_HF_BACKEND``      ``auto`` (default), ``torch`` (the reference), ``cpu`` or ``triton``
``RPG_HF_CPU_CC``       C compiler for the CPU kernels (default ``$CC``, else ``cc``/``gcc``)
``RPG_HF_CACHE_DIR``    where the built library is cached (default ``~/.cache/rpg_hf``)
``RPG_HF_CPU_OPENMP``   ``0`` builds the CPU kernels without OpenMP (plain pthreads)
"""

from rpg_hf.ops.dispatch import (
    BACKEND_ENV,
    BACKENDS,
    RingGradient,
    expand_ring,
    requested_backend,
    select_backend,
)
from rpg_hf.ops.plan import RingPlan, get_plan

__all__ = [
    "BACKENDS", "BACKEND_ENV", "RingGradient", "RingPlan", "expand_ring", "get_plan", "requested_backend",
    "select_backend",
]
