"""Which weights a ring generates, in which order, and how the DoF is split between rings.

The selection is shared with pruning (:func:`head_modules`); the result is a list of
:class:`GeneratedLayer` records, the form a checkpoint's config stores, so a rebuilt model
replays the saved order instead of selecting anew.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from torch import nn

from rpg_hf.core.reference import to_float32
from rpg_hf.spec import RPGSpec


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
