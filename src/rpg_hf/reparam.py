"""Re-parameterize an existing timm / transformers model so that a ring generates its weights.

``reparameterize(model, spec)`` keeps the model object and its class: the selected ``weight``
parameters are deleted and each such module gets a subclass of its own class whose ``weight`` is
a property that reads its tensor from an :class:`RPGGenerator` attached as ``model.rpg``.  The generator owns the ring(s) and the
recorded generated-layer order; see :class:`RPGGenerator` for when weights are generated and
why they can never be stale.  ``state_dict()`` holds the ring(s) and the free tensors only.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass

import torch
from torch import nn

from .kernels.ops import RingGradient, expand_ring
from .ring import LayerSlot, to_float32
from .spec import RPGSpec

GENERATOR_ATTR = "rpg"


@dataclass(frozen=True)
class GeneratedLayer:
    """A generated tensor as recorded in a checkpoint's config: enough to rebuild it exactly."""

    name: str
    shape: tuple[int, ...]
    ring: int
    multiplier: float

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "ring": self.ring, "multiplier": self.multiplier}

    @classmethod
    def from_dict(cls, d: dict) -> GeneratedLayer:
        return cls(str(d["name"]), tuple(int(s) for s in d["shape"]), int(d["ring"]), float(d["multiplier"]))


# --------------------------------------------------------------------------- selection


def _is_type(module: nn.Module, names: tuple[str, ...]) -> bool:
    return any(cls.__name__ in names for cls in type(module).__mro__)


def head_modules(model: nn.Module) -> set[nn.Module]:
    """The classifier: timm's ``get_classifier()``, HF's ``classifier``, else the last Linear."""
    head = None
    if callable(getattr(model, "get_classifier", None)):
        head = model.get_classifier()
    elif isinstance(getattr(model, "classifier", None), nn.Module):
        head = model.classifier
    if isinstance(head, nn.Module):
        return set(head.modules())
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return {linears[-1]} if linears else set()


def select_targets(model: nn.Module, spec: RPGSpec) -> list[tuple[str, nn.Module]]:
    """The (name, module) pairs whose ``weight`` the spec generates, in module order."""
    convs = [m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)]
    exclude_stem = spec.exclude_stem if spec.exclude_stem is not None else len(convs) > 1
    skip = set(head_modules(model)) if spec.exclude_head else set()
    if exclude_stem and convs:
        skip.add(convs[0])
    targets = []
    for name, module in model.named_modules():
        weight = module._parameters.get("weight") if hasattr(module, "_parameters") else None
        if not isinstance(weight, nn.Parameter) or module in skip or not _is_type(module, spec.target_types):
            continue
        if spec.include and not any(re.search(p, name) for p in spec.include):
            continue
        if any(re.search(p, name) for p in spec.exclude):
            continue
        targets.append((name, module))
    if not targets:
        raise ValueError(
            f"RPGSpec selects no tensor to generate in {type(model).__name__} "
            f"(target_types={spec.target_types}, include={spec.include}, exclude={spec.exclude})"
        )
    return targets


def group_key(name: str, scope: str) -> str:
    """Ring a module belongs to for a local-ring scope, from its dotted name.

    Blocks end at the last numeric component that has a named child (``layer1.0.conv1`` →
    ``layer1.0``; ``stages.0.blocks.1.conv_dw`` → ``stages.0.blocks.1``).  A stage is the prefix
    through the first numeric component when the name has two levels of numbering
    (``stages.0``), else the prefix before it (``layer1``).  Unnumbered modules form their own group.
    """
    if scope == "global":
        return ""
    parts = name.split(".")
    numeric = [i for i, p in enumerate(parts[:-1]) if p.isdigit()]
    if not numeric:
        return name
    if scope == "block":
        return ".".join(parts[: numeric[-1] + 1])
    return ".".join(parts[: numeric[0] + 1] if len(numeric) >= 2 else parts[: numeric[0]])


def _multiplier(module: nn.Module, spec: RPGSpec) -> float:
    weight = module._parameters["weight"]
    if isinstance(module, nn.modules.conv._ConvNd):
        fan_out = weight.shape[0] * math.prod(weight.shape[2:])
        return to_float32(math.sqrt(spec.reference_fan / fan_out))
    return to_float32(spec.linear_std / spec.ring_std)


def _split_dof(dof: int, sizes: list[int]) -> list[int]:
    """Largest-remainder split of the DoF over local rings, proportional to what each generates."""
    if dof < len(sizes):
        raise ValueError(f"dof={dof} is smaller than the number of local rings ({len(sizes)})")
    total = sum(sizes)
    quotas = [dof * s / total for s in sizes]
    out = [max(1, int(q)) for q in quotas]
    order = sorted(range(len(sizes)), key=lambda i: quotas[i] - int(quotas[i]), reverse=True)
    i = 0
    while sum(out) != dof:
        k = order[i % len(order)]
        if sum(out) < dof:
            out[k] += 1
        elif out[k] > 1:
            out[k] -= 1
        i += 1
    return out


def plan_layers(model: nn.Module, spec: RPGSpec) -> tuple[list[GeneratedLayer], list[int]]:
    """Select the generated tensors and lay them on ring(s): the order a checkpoint records."""
    targets = select_targets(model, spec)
    groups: dict[str, int] = {}
    ring_of = [groups.setdefault(group_key(name, spec.scope), len(groups)) for name, _ in targets]
    layers = [
        GeneratedLayer(name, tuple(m._parameters["weight"].shape), ring, _multiplier(m, spec))
        for (name, m), ring in zip(targets, ring_of, strict=True)
    ]
    sizes = [0] * len(groups)
    for layer in layers:
        sizes[layer.ring] += layer.numel
    return layers, _split_dof(spec.dof, sizes)


# --------------------------------------------------------------------------- the generator module


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


class RPGGenerator(nn.Module):
    """Owns the ring(s) and turns them into the weights of the generated modules.

    Weights are never served from an old ring, whatever wrote it (an optimizer step, fused
    kernels that do not bump ``_version``, ``ring.data = ...``, ``load_state_dict``, a DDP
    broadcast, an EMA update, dequantisation, pruning):

    * with autograd recording through the ring (training), every read of ``module.weight``
      generates that layer afresh — one kernel call; the backward of all reads of a ring is one
      batched fold (:class:`~rpg_hf.kernels.ops.RingGradient`); nothing is kept after the step;
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
                             spec.permute, spec.sign_flip)
            self.slot_of.append((layer.ring, len(self.slots[layer.ring])))
            self.slots[layer.ring].append(slot)
            starts[layer.ring] += layer.numel
        self.generations = 0  # how many times a ring's cache was filled: tests and benchmarks see it work
        self._cache: list[_Cached | None] = [None] * len(ring_sizes)
        self._hubs: list[RingGradient | None] = [None] * len(ring_sizes)

    def forward(self, x):
        """Identity: timm's feature wrappers and ``nn.Sequential`` call every child in order."""
        return x

    def _initial_ring(self) -> torch.Tensor:
        """Kaiming-normal ring for the reference fan, drawn on the CPU from the seed.

        This is the only RNG use in rpg_hf: a fresh model's starting point, saved with the
        checkpoint — expansion itself never draws a random number.
        """
        gen = torch.Generator(device="cpu").manual_seed(self.spec.seed)
        return torch.randn(self.spec.dof, generator=gen, device="cpu") * self.spec.ring_std

    @torch.no_grad()
    def reset_rings(self) -> None:
        """Re-draw the ring(s) from the seed (used by transformers' weight initialisation)."""
        init = self._initial_ring()
        for ring, part in zip(self.rings, init.split(self.ring_sizes), strict=True):
            if not ring.is_meta:
                ring.copy_(part)

    def __deepcopy__(self, memo):
        """Copy without the cache and gradient hubs (EMA copies, ``expand``): rebuilt on first use."""
        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        for key, value in self.__dict__.items():
            transient = key in ("_cache", "_hubs")
            new.__dict__[key] = [None] * len(value) if transient else copy.deepcopy(value, memo)
        return new

    def invalidate_cache(self) -> None:
        """Drop the cached weights and free their memory.

        Writes to a ring never need it (reads compare the ring's bits); writing into a cached
        *weight* tensor itself (``module.weight.data.normal_()`` under ``no_grad``) does.
        """
        self._cache = [None] * len(self.ring_sizes)

    def ring_weights(self, r: int, slot: LayerSlot | None = None) -> tuple[torch.Tensor, ...]:
        """Detached weights of every layer of ring ``r`` for the ring's current values (cached).

        With ``slot``, only that layer's window of the ring is compared: the caller reads that layer.
        """
        ring = self.rings[r]
        if ring.is_meta:  # transformers builds models on the meta device: shapes only
            return tuple(torch.empty(s.shape, device="meta", dtype=ring.dtype) for s in self.slots[r])
        cached = self._cache[r]
        if cached is not None and cached.matches(ring, slot):
            return cached.weights
        self._cache[r] = None  # free the old weights before generating the new ones
        with torch.no_grad():
            weights = expand_ring(ring.detach(), self.slots[r])
        self.generations += 1
        self._cache[r] = _Cached(ring.detach().clone(), weights)
        return weights

    def weight(self, position: int) -> torch.Tensor:
        """The current weight of generated layer ``position`` (see the class docstring)."""
        r, i = self.slot_of[position]
        ring = self.rings[r]
        slot = self.slots[r][i]
        if torch.compiler.is_compiling():
            return expand_ring(ring, (slot,))[0]
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
        sub = type(f"RPG{cls.__name__}", (cls,), {"weight": property(_generated_weight), "_rpg_base": cls,
                                                  "__module__": cls.__module__})
        _GENERATED_CLASSES[cls] = sub
    return sub


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


# --------------------------------------------------------------------------- public API


def get_generator(model: nn.Module) -> RPGGenerator:
    """The model's ring holder: ``model.rpg``, else the one inside a wrapper (timm's feature nets)."""
    gen = getattr(model, GENERATOR_ATTR, None)
    if isinstance(gen, RPGGenerator):
        return gen
    found = next((m for m in model.modules() if isinstance(m, RPGGenerator)), None)
    if found is None:
        raise ValueError(f"{type(model).__name__} is not re-parameterized by rpg_hf (no `.{GENERATOR_ATTR}`)")
    return found


def _named_targets(model: nn.Module, layers: list[GeneratedLayer]) -> list[nn.Module]:
    modules = dict(model.named_modules())
    out = []
    for layer in layers:
        module = modules.get(layer.name)
        weight = module._parameters.get("weight") if module is not None else None
        if weight is None:
            raise ValueError(
                f"architecture mismatch: the recorded generated layer {layer.name!r} has no weight "
                f"parameter in {type(model).__name__}"
            )
        if tuple(weight.shape) != layer.shape:
            raise ValueError(
                f"architecture mismatch at {layer.name!r}: recorded shape {layer.shape}, "
                f"model has {tuple(weight.shape)}"
            )
        out.append(module)
    return out


def reparameterize(
    model: nn.Module,
    spec: RPGSpec,
    layers: list[GeneratedLayer] | None = None,
    ring_sizes: list[int] | None = None,
) -> nn.Module:
    """Make the ring(s) generate the selected weights of ``model``; returns the same object.

    ``layers``/``ring_sizes`` replay a recorded plan (from a checkpoint's config) instead of
    selecting anew, so a model rebuilt elsewhere gets exactly the saved layer order.  The
    generator becomes the model's *first* child, so wrappers that keep a prefix of the children
    (timm's feature extractors) keep the ring.
    """
    if hasattr(model, GENERATOR_ATTR):
        raise ValueError(f"{type(model).__name__} already has an attribute `{GENERATOR_ATTR}`; re-parameterized twice?")
    if layers is None:
        layers, ring_sizes = plan_layers(model, spec)
    elif ring_sizes is None:
        raise ValueError("a recorded layer list needs its ring_sizes")
    modules = _named_targets(model, layers)
    reference = next(iter(modules))._parameters["weight"]
    generator = RPGGenerator(spec, layers, ring_sizes).to(device=reference.device)
    for position, module in enumerate(modules):
        _attach(module, generator, position)
    children = list(model._modules.items())
    model._modules.clear()
    model._modules[GENERATOR_ATTR] = generator
    model._modules.update(children)
    return model


def expand(model: nn.Module) -> nn.Module:
    """A plain copy of the model (same class) with the generated weights materialised as parameters.

    Generated modules are found by the position they carry, not by name, so models whose
    modules were renamed or dropped after re-parameterization (timm's feature wrappers) expand too.
    """
    weights = get_generator(model).generate_all()
    plain = copy.deepcopy(model)
    for name, module in list(plain.named_modules()):
        if isinstance(module, RPGGenerator):
            parent, _, child = name.rpartition(".")
            del plain.get_submodule(parent)._modules[child]
    for module in plain.modules():
        if "_rpg_position" in module.__dict__:
            _detach(module, weights[module._rpg_position].clone())
    return plain
