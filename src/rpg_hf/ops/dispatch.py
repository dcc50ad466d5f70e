"""Backend dispatch, the eager autograd node, and the ``torch.library`` custom ops used under compile.

Backends (``RPG_HF_BACKEND=auto|torch|cpu|triton``, default ``auto``):

* ``triton`` — CUDA (or CPU tensors under ``TRITON_INTERPRET=1``, tests only): one launch for all
  layers of a ring forward, one (plus a tiny sum) backward; see :mod:`.triton_ring`.
* ``cpu`` — the C kernels of :mod:`.cpu` for float32/float64 rings on the CPU.
* ``torch`` — the pure-PyTorch reference of :mod:`rpg_hf.core.reference`.

``auto`` picks triton for CUDA rings when triton imports, cpu for CPU rings when the C library
builds, else torch.  Forcing a backend that cannot run raises.

Every backend returns one new tensor per layer (no views of a shared buffer) and takes the
per-layer weight gradients as they come (nothing is concatenated).  In eager mode a
:class:`RingGradient` gives each generated weight its own node and folds their gradients in one
batched backward per ring.  Under ``torch.compile`` the same work is
the custom op ``rpg_hf::expand_ring`` (``Tensor[]`` out) with its backward
``rpg_hf::expand_ring_backward`` (``Tensor?[]`` in), both with fake implementations, so Dynamo
sees no data-dependent control flow and does not break the graph inside the generator.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import torch
from torch.autograd.function import once_differentiable
from torch.fx import _symbolic_trace

from rpg_hf.core.construction import MASK32, MASK64
from rpg_hf.core.reference import LayerSlot, fold_window, generate_layer, window_grad
from rpg_hf.ops import cpu, triton_ring
from rpg_hf.ops.plan import RingPlan, get_plan

BACKEND_ENV = "RPG_HF_BACKEND"
# is_fx_tracing(): torch.fx.symbolic_trace (torchvision's / timm's FX feature extractors too) is building a
# graph, so weights must become graph nodes.  The older name also answers True under torch.export, where
# is_compiling() already routes to the custom op.
is_fx_tracing = getattr(_symbolic_trace, "is_fx_symbolic_tracing", _symbolic_trace.is_fx_tracing)

BACKENDS = ("auto", "torch", "cpu", "triton")


def requested_backend() -> str:
    value = os.environ.get(BACKEND_ENV, "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise ValueError(f"{BACKEND_ENV}={value!r}: expected one of {BACKENDS}")
    return value


def select_backend(ring: torch.Tensor, plan: RingPlan, dtype: torch.dtype | None = None) -> str:
    """The backend that generates ``plan`` from ``ring`` into ``dtype`` (see the module docstring)."""
    want = requested_backend()
    if want == "torch":
        return "torch"
    if want == "triton":
        if not triton_ring.supports(ring, plan, dtype):
            raise RuntimeError(
                f"{BACKEND_ENV}=triton, but triton cannot run here (triton importable: {triton_ring.HAVE_TRITON}, "
                f"ring on {ring.device} {ring.dtype}; CPU tensors need TRITON_INTERPRET=1)"
            )
        return "triton"
    if want == "cpu":
        if not cpu.supports(ring, plan):
            raise RuntimeError(
                f"{BACKEND_ENV}=cpu, but the C kernels cannot run here (ring on {ring.device} {ring.dtype}; "
                f"library: {cpu.error() or 'ok'})"
            )
        return "cpu"
    if ring.is_cuda and triton_ring.supports(ring, plan, dtype):
        return "triton"
    if ring.device.type == "cpu" and cpu.supports(ring, plan):
        return "cpu"
    return "torch"


# --------------------------------------------------------------------------- backend calls


def _forward(backend: str, ring: torch.Tensor, plan: RingPlan, dtype, out=None) -> tuple[torch.Tensor, ...]:
    """One tensor per layer (never views of one another); ``out``: CPU buffers to write into."""
    if backend == "cpu":
        return cpu.forward(ring, plan, dtype, out=out)
    if backend == "triton":
        return triton_ring.forward(ring, plan, dtype)
    with torch.no_grad():
        return tuple(generate_layer(ring, s, dtype) for s in plan.slots)


def _backward(backend: str, grads, plan: RingPlan, ring_dtype: torch.dtype, device) -> torch.Tensor:
    if backend == "cpu":
        return cpu.backward(grads, plan, ring_dtype)
    if backend == "triton":
        return triton_ring.backward(grads, plan, ring_dtype, device)
    ring_grad = torch.zeros(plan.ring_size, dtype=torch.float32, device=device)
    for slot, g in zip(plan.slots, grads, strict=True):
        if g is not None:
            fold_window(ring_grad, window_grad(g, slot), slot.start)
    return ring_grad.to(ring_dtype)


# --------------------------------------------------------------------------- eager autograd


class RingGradient:
    """Where the weight gradients of one ring meet: per-layer nodes forward, one batched backward.

    Each read of a generated weight in training is its own autograd node (:class:`_LayerWeight`),
    computed from the ring's values *at that read* — so no read can see an old ring, whatever
    wrote it.  Their backward does no work: it leaves the weight gradient here and passes a
    zero-size signal to one shared node (:class:`_RingGrad`) whose input is the ring.  Autograd
    runs that node after every layer node of the pass, and it folds all gradients left here in
    one kernel call — the cost of one backward per ring, not one ring-sized buffer per layer.
    The shared node saves nothing, so any number of passes (gradient accumulation, checkpointing)
    go through it; each takes what its layer nodes left.

    On the CPU the weight gradients of the last backward are kept (:attr:`held`) until the next
    forward reads the ring — the lifetime a plain model's ``.grad`` has.  Dropped at the end of the
    backward instead, tens of MB come free at once mid-step, glibc hands them back to the OS, and
    the next backward faults them in again: about 10K page faults a step for resnet18, 8% of its
    step on two cores.  Kept, the next step's gradients reuse the memory, as a plain model's do.
    """

    POOL = 2  # CPU output buffers kept per generated layer

    def __init__(self, ring: torch.Tensor):
        self.ring_ref = ring
        self.buffers: dict[int, list[torch.Tensor]] = {}  # layer position -> its reusable CPU output buffers
        self.key = (ring.device, ring.dtype, ring.numel())
        self.pending: list[tuple[int, LayerSlot, torch.Tensor]] = []  # (backward pass id, slot, grad)
        self.held: tuple[torch.Tensor, ...] | None = None  # CPU: the last backward's weight gradients
        self.token = _RingGrad.apply(ring, self)

    def matches(self, ring: torch.Tensor) -> bool:
        return self.ring_ref is ring and self.key == (ring.device, ring.dtype, ring.numel())

    def weight(self, ring: torch.Tensor, slot: LayerSlot, dtype: torch.dtype | None = None) -> torch.Tensor:
        self.held = None  # a new forward: the last backward's gradients go (see the class docstring)
        plan = get_plan((slot,), ring.numel())
        backend = select_backend(ring, plan, dtype)
        buf = self._free_buffer(slot, ring.dtype) if backend == "cpu" and dtype in (None, ring.dtype) else None
        out = None if buf is None else torch.empty(0, dtype=ring.dtype).set_(buf.untyped_storage(), 0, slot.shape)
        return _LayerWeight.apply(self.token, ring, plan, dtype, backend, self, out)

    def _free_buffer(self, slot: LayerSlot, dtype: torch.dtype) -> torch.Tensor | None:
        """A CPU buffer for ``slot``'s weight whose memory no other tensor can reach (None: allocate afresh).

        Fresh memory costs page faults (12-14 ms per step for resnet18's 45 MB of weights on two cores,
        six times the generation itself); so each layer keeps up to :attr:`POOL` buffers, made on first
        need.  A buffer is handed out again only when nothing but the pool holds its storage: the
        storage's reference count counts every tensor on it — the weight, its views (the ``weight.t()``
        ``F.linear`` saves for backward), ``.detach()`` and ``.data`` — so reuse never writes into memory
        a live tensor can read.  Where torch does not expose the count, nothing is reused.
        """
        if _storage_uses is None:
            return None
        pool = self.buffers.setdefault(slot.position, [])
        for buf in pool:
            if _storage_uses(buf) <= _ALONE:
                return buf
        if len(pool) >= self.POOL:
            return None
        buf = torch.empty(slot.shape, dtype=dtype)
        pool.append(buf)
        return buf

    def fold(self) -> torch.Tensor | None:
        """dL/dring from the gradients this backward pass left (None if there is none).

        Entries are tagged with autograd's graph-task id, so a reentrant pass (checkpointing)
        folds its own and leaves the enclosing pass's for it.
        """
        task = torch._C._current_graph_task_id()
        mine = [(slot, g) for t, slot, g in self.pending if t == task]
        self.pending = [entry for entry in self.pending if entry[0] != task]
        if not mine:
            return None
        slots, grads = zip(*mine, strict=True)
        device, dtype, size = self.key
        plan = get_plan(slots, size)
        backend = select_backend(torch.empty(0, dtype=dtype, device=device), plan)
        ring_grad = _backward(backend, grads, plan, dtype, device)
        if device.type == "cpu":
            self.held = grads
        return ring_grad


def _storage_uses_of(t: torch.Tensor) -> int:
    """How many references the storage of ``t`` has (tensors on it, plus the one this call makes)."""
    return torch._C._storage_Use_Count(t.untyped_storage()._cdata)


_storage_uses = _storage_uses_of if hasattr(torch._C, "_storage_Use_Count") else None
_ALONE = _storage_uses(torch.empty(1)) if _storage_uses is not None else 0  # a tensor that shares its storage with none


class _RingGrad(torch.autograd.Function):
    """ring -> a zero-size token; backward: the folded gradient of every layer read through it."""

    @staticmethod
    def forward(ctx, ring, hub):  # type: ignore[override]
        ctx.hub = hub
        return ring.new_zeros(0)

    @staticmethod
    @once_differentiable
    def backward(ctx, _):  # type: ignore[override]
        return ctx.hub.fold(), None


class _LayerWeight(torch.autograd.Function):
    """One generated weight from the ring's current values; backward hands its gradient to the hub."""

    @staticmethod
    def forward(ctx, token, ring, plan, dtype, backend, hub, out):  # type: ignore[override]
        ctx.set_materialize_grads(False)
        ctx.slot, ctx.hub = plan.slots[0], hub
        return _forward(backend, ring.detach(), plan, dtype, None if out is None else [out])[0]

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        if grad is None:
            return (None,) * 7
        ctx.hub.pending.append((torch._C._current_graph_task_id(), ctx.slot, grad))
        return (grad.new_zeros(0),) + (None,) * 6


# --------------------------------------------------------------------------- custom ops (torch.compile)


def _describe(slots: tuple[LayerSlot, ...]) -> tuple[list[int], list[float], list[int]]:
    """Plain ints/floats that rebuild ``slots``: the custom op's arguments (no Python objects).

    ``desc`` = per layer: position, start, flags (permute | sign flip << 1 | generator version << 2),
    seed (two 32-bit halves: the keys use seed mod 2**64);
    ``shapes`` = per layer its number of dimensions followed by the dimensions.
    """
    desc: list[int] = []
    shapes: list[int] = []
    for s in slots:
        seed = s.seed & MASK64
        desc += [s.position, s.start, int(s.permute) | (int(s.sign_flip) << 1) | (s.version << 2), seed >> 32,
                 seed & MASK32]
        shapes += [len(s.shape), *s.shape]
    return desc, [float(s.multiplier) for s in slots], shapes


def _unpack_shapes(shapes) -> list[tuple[int, ...]]:
    out, i = [], 0
    while i < len(shapes):
        ndim = shapes[i]
        out.append(tuple(shapes[i + 1 : i + 1 + ndim]))
        i += 1 + ndim
    return out


@functools.lru_cache(maxsize=256)
def _plan_from_desc(desc: tuple[int, ...], mults: tuple[float, ...], shapes: tuple[int, ...], ring_size: int):
    slots = tuple(
        LayerSlot(desc[i], shape, desc[i + 1], m, (desc[i + 3] << 32) | desc[i + 4], bool(desc[i + 2] & 1),
                  bool(desc[i + 2] & 2), desc[i + 2] >> 2)
        for i, m, shape in zip(range(0, len(desc), 5), mults, _unpack_shapes(shapes), strict=True)
    )
    return get_plan(slots, ring_size)


@torch.library.custom_op("rpg_hf::expand_ring", mutates_args=())
def expand_ring_op(
    ring: torch.Tensor, desc: list[int], mults: list[float], shapes: list[int], dtype: torch.dtype | None
) -> list[torch.Tensor]:
    """Every layer described by ``desc``/``shapes`` (see :func:`_describe`), one tensor each."""
    plan = _plan_from_desc(tuple(desc), tuple(mults), tuple(shapes), ring.numel())
    return list(_forward(select_backend(ring, plan, dtype), ring, plan, dtype))


@expand_ring_op.register_fake
def _(ring, desc, mults, shapes, dtype):
    return [ring.new_empty(shape, dtype=dtype or ring.dtype) for shape in _unpack_shapes(shapes)]


@torch.library.custom_op("rpg_hf::expand_ring_backward", mutates_args=())
def expand_ring_backward_op(
    grads: list[torch.Tensor | None], ring_size: int, desc: list[int], mults: list[float], shapes: list[int],
    ring_dtype: torch.dtype,
) -> torch.Tensor:
    """dL/dring from the per-layer weight gradients (None: no gradient)."""
    plan = _plan_from_desc(tuple(desc), tuple(mults), tuple(shapes), ring_size)
    device = next(g.device for g in grads if g is not None)
    backend = select_backend(torch.empty(0, dtype=ring_dtype, device=device), plan)
    return _backward(backend, grads, plan, ring_dtype, device)


@expand_ring_backward_op.register_fake
def _(grads, ring_size, desc, mults, shapes, ring_dtype):
    g = next(g for g in grads if g is not None)
    return g.new_empty(ring_size, dtype=ring_dtype)


def _setup_context(ctx, inputs, output):
    ring, desc, mults, shapes, _ = inputs
    ctx.args = (desc, mults, shapes)
    ctx.ring_size, ctx.ring_dtype = ring.numel(), ring.dtype


def _op_backward(ctx, grads):
    if all(g is None for g in grads):
        return None, None, None, None, None
    desc, mults, shapes = ctx.args
    ring_grad = torch.ops.rpg_hf.expand_ring_backward(list(grads), ctx.ring_size, desc, mults, shapes, ctx.ring_dtype)
    return ring_grad, None, None, None, None


expand_ring_op.register_autograd(_op_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------- entry point


def expand_ring(
    ring: torch.Tensor, slots: Sequence[LayerSlot], dtype: torch.dtype | None = None
) -> tuple[torch.Tensor, ...]:
    """Generate every layer of ``slots`` from ``ring``; differentiable w.r.t. the ring.

    Runs on the selected backend (C kernels on the CPU, Triton on CUDA; ``RPG_HF_BACKEND=torch``
    forces the pure-PyTorch functions of :mod:`rpg_hf.core.reference`).  Every backend gives the reference's
    weights bit for bit and its ring gradient to float32 rounding.
    """
    slots = tuple(slots)
    if torch.compiler.is_compiling() or is_fx_tracing():  # a graph is being built: one custom-op node
        desc, mults, shapes = _describe(slots)
        out = torch.ops.rpg_hf.expand_ring(ring, desc, mults, shapes, dtype)
        return tuple(out[i] for i in range(len(slots)))  # indexing, not iteration: an FX proxy cannot iterate
    if torch.is_grad_enabled() and ring.requires_grad:
        hub = RingGradient(ring)
        return tuple(hub.weight(ring, s, dtype) for s in slots)
    plan = get_plan(slots, ring.numel())
    with torch.no_grad():
        return _forward(select_backend(ring, plan, dtype), ring, plan, dtype)
