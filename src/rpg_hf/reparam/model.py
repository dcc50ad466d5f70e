"""Public entry points: :func:`reparameterize` a model, :func:`get_generator` its ring holder,
:func:`expand` it back to a plain model."""

from __future__ import annotations

import copy
import re

from torch import nn

from rpg_hf.reparam.layer import RPGGenerator, _attach, _detach
from rpg_hf.reparam.targets import GeneratedLayer, plan_layers
from rpg_hf.spec import RPGSpec

GENERATOR_ATTR = "rpg"  # the ring holder's attribute: rings are the parameters ``rpg.rings.<i>``
RING_KEY_PATTERN = re.compile(rf"(^|\.){GENERATOR_ATTR}\.rings\.\d+$")


def is_ring_key(name: str) -> bool:
    """Whether a parameter / state-dict name is a ring (``rpg.rings.0``, ``backbone.rpg.rings.1``...)."""
    return RING_KEY_PATTERN.search(name) is not None



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


def _refuse_tied(model: nn.Module, layers: list[GeneratedLayer], modules: list[nn.Module]) -> None:
    """A weight shared by two modules (tied) cannot become one module's generated weight: the other module
    would keep a stale parameter, and the DoF table would count it twice.  Say which, and what to do."""
    names: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
    for layer, module in zip(layers, modules, strict=True):
        shared = [n for n in names.get(id(module._parameters["weight"]), []) if n != f"{layer.name}.weight"]
        if shared:
            raise ValueError(
                f"{layer.name}.weight is tied to {', '.join(shared)} (one Parameter shared by several modules): "
                "rpg_hf does not generate tied weights. Keep it free with RPGSpec(exclude=[...]) naming "
                f"{layer.name!r}, or untie the modules first"
            )


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
    _refuse_tied(model, layers, modules)
    reference = next(iter(modules))._parameters["weight"]
    generator = RPGGenerator(spec, layers, ring_sizes).to(device=reference.device)
    for position, module in enumerate(modules):
        _attach(module, generator, position)
    generator.watch(model)
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
    for module in plain.modules():  # the ring check of RPGGenerator.watch goes with the ring
        for gen in (m for m in module.children() if isinstance(m, RPGGenerator)):
            for hooks in (module._forward_pre_hooks, module._forward_hooks, module._forward_hooks_always_called):
                for hook_id in gen.watch_hooks:
                    hooks.pop(hook_id, None)
    for name, module in list(plain.named_modules()):
        if isinstance(module, RPGGenerator):
            parent, _, child = name.rpartition(".")
            del plain.get_submodule(parent)._modules[child]
    for module in plain.modules():
        if "_rpg_position" in module.__dict__:
            _detach(module, weights[module._rpg_position].clone())
    return plain
