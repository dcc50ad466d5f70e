"""The module layer: :class:`RPGGenerator` owns the ring(s) and serves every generated ``weight``.

A generated module keeps its object and gets a subclass of its own class whose ``weight`` is a
property reading :meth:`RPGGenerator.weight` (as ``torch.nn.utils.parametrize`` does), so the
weights are never stale whatever writes the ring; see :class:`RPGGenerator` for when weights
are generated and when they are served from a cache.
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass

import torch
from torch import nn

from rpg_hf.core.reference import LayerSlot
from rpg_hf.ops.dispatch import RingGradient, expand_ring, is_fx_tracing
from rpg_hf.reparam import identity
from rpg_hf.reparam.targets import GeneratedLayer
from rpg_hf.spec import RPGSpec


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bit pattern as integers: ``torch.equal`` on it is exact (NaN, -0.0 included)."""
    ints = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    return t.detach().reshape(-1).view(ints[t.element_size()])


@dataclass
class _Cached:
    """Weights generated from a ring, with a copy of the ring they came from."""

    ring: torch.Tensor  # detached clone of the ring at generation time
    weights: tuple[torch.Tensor, ...]

    def __post_init__(self) -> None:
        self.bits = _bits(self.ring)

    def matches(self, ring: torch.Tensor, slot: LayerSlot | None = None) -> bool:
        """Whether ``ring`` still holds the bits the weights came from: all of them, or only the
        window ``slot``'s layer reads (a layer shorter than the ring depends on no other entry)."""
        snap = self.ring
        if snap.device != ring.device or snap.dtype != ring.dtype or snap.shape != ring.shape:
            return False
        now, size = _bits(ring), ring.numel()
        if slot is None or slot.numel >= size:
            return torch.equal(self.bits, now)
        lo = slot.start % size
        hi = lo + slot.numel
        if hi <= size:
            return torch.equal(self.bits[lo:hi], now[lo:hi])
        return torch.equal(self.bits[lo:], now[lo:]) and torch.equal(self.bits[: hi - size], now[: hi - size])


class RPGGenerator(identity.CarriesConstruction):
    """Owns the ring(s) and turns them into the weights of the generated modules.

    Weights are never served from an old ring, whatever wrote it (an optimizer step, fused
    kernels that do not bump ``_version``, ``ring.data = ...``, ``load_state_dict``, a DDP
    broadcast, an EMA update, dequantisation, pruning):

    * with autograd recording through the ring (training), every read of ``module.weight``
      generates that layer afresh — one kernel call; the backward of all reads of a ring is one
      batched fold (:class:`~rpg_hf.ops.dispatch.RingGradient`); nothing is kept after the step;
    * otherwise (eval, ``no_grad``, a frozen ring) all layers of a ring are generated once and
      kept with a copy of the ring's bits; a read compares the ring's bits in the layer's window
      with that copy (at most N integer compares, against the ~T/N-times larger generation) and
      regenerates on any change.

    Under ``torch.compile`` the first rule always applies, so a traced graph holds no cache state.
    """

    def __init__(self, spec: RPGSpec, layers: list[GeneratedLayer], ring_sizes: list[int]):
        super().__init__()
        if sum(ring_sizes) != spec.dof:
            raise ValueError(f"ring sizes {ring_sizes} sum to {sum(ring_sizes)}, not dof={spec.dof}")
        self.spec = spec
        self.layers = list(layers)
        self.ring_sizes = list(ring_sizes)
        self.rings = nn.ParameterList(nn.Parameter(part) for part in self._initial_ring().split(ring_sizes))
        self.slots: list[list[LayerSlot]] = [[] for _ in ring_sizes]
        self.slot_of: list[tuple[int, int]] = []  # layer position -> (ring, index within ring)
        starts = [0] * len(ring_sizes)
        for position, layer in enumerate(self.layers):
            if not 0 <= layer.ring < len(ring_sizes):
                raise ValueError(f"layer {layer.name!r} names ring {layer.ring}, but there are {len(ring_sizes)}")
            slot = LayerSlot(position, layer.shape, starts[layer.ring], layer.multiplier, spec.seed,
                             spec.permute, spec.sign_flip, spec.generator_version)
            self.slot_of.append((layer.ring, len(self.slots[layer.ring])))
            self.slots[layer.ring].append(slot)
            starts[layer.ring] += layer.numel
        for r, size in enumerate(ring_sizes):
            generated = sum(s.numel for s in self.slots[r])
            if size > generated:
                raise ValueError(
                    f"ring {r} has {size:,} entries but generates only {generated:,} weights: "
                    f"{size - generated:,} entries would never be used (dof={spec.dof:,} for "
                    f"{sum(layer.numel for layer in self.layers):,} generated weights in all); choose a smaller dof"
                )
        self.register_construction()  # rpg.construction: every state dict says which construction it needs
        self.generations = 0  # how many times a ring's cache was filled: tests and benchmarks see it work
        self._cache: list[_Cached | None] = [None] * len(ring_sizes)
        self._hubs: list[RingGradient | None] = [None] * len(ring_sizes)
        self._checked = threading.local()  # per thread: the forwards of a watched model whose rings were checked
        self._lock = threading.Lock()  # one cache fill at a time: concurrent eval threads share the first one's
        self.watch_hooks: list[int] = []  # ids of the forward hooks :meth:`watch` put on the model

    def forward(self, x):
        """Identity: timm's feature wrappers and ``nn.Sequential`` call every child in order."""
        return x

    # ------------------------------------------------------------------ one ring check per forward
    def watch(self, model: nn.Module) -> None:
        """Check the rings once per forward of ``model`` instead of at every weight read (eval).

        Without autograd every read of a cached weight compares the ring's bits in that layer's
        window with the copy the weights came from: about 20 µs a layer, 3% of a small eval
        forward.  While a forward of ``model`` runs, the rings were checked when it began (the
        pre-hook regenerates whatever changed), so reads inside it trust the cache; reads outside
        a forward (a user's ``layer.weight``, timm's feature wrappers, which call the children
        themselves) still compare.  The counter is per thread, so one thread's forward never
        vouches for another thread's reads; the post-hook always runs (an exception included).
        """
        pre = model.register_forward_pre_hook(self._forward_begins)
        post = model.register_forward_hook(self._forward_ends, always_call=True)
        self.watch_hooks = [pre.id, post.id]

    def _cacheable(self) -> bool:
        """Reads are served from the cache now: autograd records through no ring (eval, no_grad)."""
        return not (torch.is_grad_enabled() and any(r.requires_grad for r in self.rings))

    def _forward_begins(self, module, args) -> None:
        trusted = not (torch.compiler.is_compiling() or is_fx_tracing()) and self._cacheable()
        if trusted:
            for r in range(len(self.rings)):
                self.ring_weights(r)  # the full comparison, and a regeneration where a ring changed
        stack = self._checked.__dict__.setdefault("stack", [])
        stack.append(trusted)

    def _forward_ends(self, module, args, output) -> None:
        stack = self._checked.__dict__.get("stack")
        if stack:
            stack.pop()

    def _in_checked_forward(self) -> bool:
        stack = self._checked.__dict__.get("stack")
        return bool(stack) and stack[-1]

    def _initial_ring(self) -> torch.Tensor:
        """Kaiming-normal ring for the reference fan, drawn on the CPU from the seed.

        This is the only RNG use in rpg_hf: a fresh model's starting point, saved with the
        checkpoint — expansion itself never draws a random number.
        """
        gen = torch.Generator(device="cpu").manual_seed(self.spec.seed)
        return torch.randn(self.spec.dof, generator=gen, device="cpu") * self.spec.ring_std

    @torch.no_grad()
    def reset_rings(self, keep_loaded: bool = False) -> None:
        """Re-draw the ring(s) from the seed (used by transformers' weight initialisation).

        ``keep_loaded``: leave the rings transformers marked as loaded from a checkpoint
        (``_is_hf_initialized``): only a ring the file lacked is drawn afresh."""
        init = self._initial_ring()
        for ring, part in zip(self.rings, init.split(self.ring_sizes), strict=True):
            if not ring.is_meta and not (keep_loaded and getattr(ring, "_is_hf_initialized", False)):
                ring.copy_(part)

    # ------------------------------------------------------------------ the construction's identity
    def construction_values(self) -> tuple[int, ...]:
        """This generator's :mod:`~rpg_hf.reparam.identity` (version, seed, switches, layout, ring sizes):
        computed once, the layers and the spec never change after construction."""
        values = self.__dict__.get("_construction_values")
        if values is None:
            spec = self.spec
            rows = [(layer.shape, layer.ring, layer.multiplier) for layer in self.layers]
            values = identity.identity_values(spec.generator_version, spec.seed, spec.permute, spec.sign_flip, rows,
                                              self.ring_sizes)
            self.__dict__["_construction_values"] = values
        return values

    def __prepare_scriptable__(self):
        """``torch.jit.script`` cannot compile the Python that generates the weights: say what works."""
        raise RuntimeError(
            "an RPG model cannot be scripted with torch.jit.script: its weights are generated from the ring by "
            "Python code at every read. Script the plain model instead: torch.jit.script(rpg_hf.expand(model)) "
            "(or model.expand() for RPGForImageClassification), or use torch.export.export(model, args) / "
            "torch.compile(model), which trace the generation as the rpg_hf::expand_ring custom op"
        )

    def __deepcopy__(self, memo):
        """Copy without the cache and gradient hubs (EMA copies, ``expand``): rebuilt on first use."""
        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        for key, value in self.__dict__.items():
            if key in ("_checked", "_lock"):
                new.__dict__[key] = threading.local() if key == "_checked" else threading.Lock()
                continue
            transient = key in ("_cache", "_hubs")
            new.__dict__[key] = [None] * len(value) if transient else copy.deepcopy(value, memo)
        return new

    def __getstate__(self):
        """Pickle (``torch.save(model)``) without the cache, the gradient hubs, the per-thread state and the lock."""
        state = dict(self.__dict__)
        state["_cache"] = [None] * len(self.ring_sizes)
        state["_hubs"] = [None] * len(self.ring_sizes)
        state.pop("_checked", None)
        state.pop("_lock", None)
        return state

    def __setstate__(self, state) -> None:
        self.__dict__.update(state)
        self._checked = threading.local()
        self._lock = threading.Lock()

    def invalidate_cache(self) -> None:
        """Drop the cached weights and free their memory.

        Writes to a ring never need it (reads compare the ring's bits); writing into a cached
        *weight* tensor itself (``module.weight.data.normal_()`` under ``no_grad``) does.
        """
        self._cache = [None] * len(self.ring_sizes)

    def ring_weights(self, r: int, slot: LayerSlot | None = None) -> tuple[torch.Tensor, ...]:
        """Detached weights of every layer of ring ``r`` for the ring's current values (cached).

        With ``slot``, only that layer's window of the ring is compared: the caller reads that layer.
        Threads that find the cache stale at once (eval forwards served from several threads, after a
        ring change) wait for the first one's generation and use it: one generation, not one per thread
        (each holding a whole model's weights at the same time).
        """
        ring = self.rings[r]
        if ring.is_meta:  # transformers builds models on the meta device: shapes only
            return tuple(torch.empty(s.shape, device="meta", dtype=ring.dtype) for s in self.slots[r])
        cached = self._cache[r]
        if cached is not None and cached.matches(ring, slot):
            return cached.weights
        with self._lock:
            cached = self._cache[r]  # another thread may have generated them while this one waited
            if cached is not None and cached.matches(ring, slot):
                return cached.weights
            self._cache[r] = None  # free the old weights before generating the new ones
            self._hubs[r] = None  # and training's kept buffers and gradients (made again by the next step)
            with torch.no_grad():
                weights = expand_ring(ring.detach(), self.slots[r])
            self.generations += 1
            self._cache[r] = _Cached(ring.detach().clone(), weights)
            return weights

    def weight(self, position: int) -> torch.Tensor:
        """The current weight of generated layer ``position`` (see the class docstring)."""
        r, i = self.slot_of[position]
        cached = self._cache[r]
        if cached is not None and not torch.is_grad_enabled() and self._in_checked_forward():
            return cached.weights[i]  # inside a watched eval forward: the rings were checked when it began
        ring = self.rings[r]  # under FX tracing: a get_attr proxy of the ring (nn.Module.__getattr__ is traced)
        slot = self.slots[r][i]
        if torch.compiler.is_compiling() or is_fx_tracing():
            return expand_ring(ring, (slot,))[0]  # the rpg_hf::expand_ring custom op: a graph node with a backward
        if torch.is_grad_enabled() and ring.requires_grad and not ring.is_meta:
            self._cache[r] = None  # training holds no generated weights between steps
            hub = self._hubs[r]
            if hub is None or not hub.matches(ring):
                hub = self._hubs[r] = RingGradient(ring)
            return hub.weight(ring, slot)
        return self.ring_weights(r, slot)[i]

    def generate_all(self) -> list[torch.Tensor]:
        """Detached weights of every generated layer, in the recorded order."""
        with torch.no_grad():
            return [self.weight(p).detach() for p in range(len(self.layers))]


def _generated_weight(module: nn.Module) -> torch.Tensor:
    return module._rpg_generator.weight(module._rpg_position)


_GENERATED_CLASSES: dict[type, type] = {}


def _generated_class(cls: type) -> type:
    """``cls`` with ``weight`` as a property read from the ring (as torch's parametrize does).

    A property rather than forward hooks: ``module.weight`` is current wherever it is read —
    inside forward, in ``forward_features``, in timm's feature wrappers, or by a user — and
    ``torch.compile`` traces it into the model's graph.
    """
    sub = _GENERATED_CLASSES.get(cls)
    if sub is None:
        # __module__ is this module's: FX does not take it for a torch.nn leaf and traces its forward,
        # where the weight read becomes the custom op on the ring; pickling rebuilds it from its base class
        sub = type(f"RPG{cls.__name__}", (cls,), {"weight": property(_generated_weight), "_rpg_base": cls,
                                                  "__module__": __name__, "__qualname__": f"RPG{cls.__qualname__}",
                                                  "__reduce_ex__": _reduce_generated})
        _GENERATED_CLASSES[cls] = sub
    return sub


def _reduce_generated(module: nn.Module, protocol: int):
    """Pickle a generated module as its plain base class plus its state (the class is made at run time)."""
    return _rebuild_generated, (module._rpg_base,), module.__dict__


def _rebuild_generated(base: type) -> nn.Module:
    cls = _generated_class(base)
    return cls.__new__(cls)


def _attach(module: nn.Module, generator: RPGGenerator, position: int) -> None:
    del module._parameters["weight"]
    module.__dict__["_rpg_generator"] = generator  # a plain reference: not a second path to the ring
    module.__dict__["_rpg_position"] = position
    module.__class__ = _generated_class(type(module))


def _detach(module: nn.Module, weight: torch.Tensor) -> None:
    """Undo :func:`_attach`: the plain class with ``weight`` as an ordinary parameter."""
    module.__class__ = module._rpg_base
    del module.__dict__["_rpg_generator"], module.__dict__["_rpg_position"]
    module.weight = nn.Parameter(weight)
