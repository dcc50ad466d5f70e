"""The backbone of an RPG checkpoint and the ring module that generates its weights (trust_remote_code file).

rpg_hf copies this file into every ring-only checkpoint it saves, beside ``modeling_rpg.py``; it
imports torch and transformers (timm only for timm backbones, inside a try); the weights come from
``reference.py`` (rpg_hf's pure-PyTorch generation, shipped verbatim).  :func:`build_backbone`
makes the plain timm model / ``ViTForImageClassification`` a config describes; :func:`attach_rings`
replaces its recorded layers' weights by :class:`RPGRings`-generated tensors.
"""

from __future__ import annotations

import torch
from torch import nn

from .configuration_rpg import RPGConfig
from .identity import CarriesConstruction, config_identity
from .reference import LayerSlot, generate_layer


def image_processor_for(config: RPGConfig):
    """The image processor of the config's preprocessing (saved as ``preprocessor_config.json``)."""
    from transformers import BitImageProcessor

    size = config.image_size
    return BitImageProcessor(
        do_resize=True, size={"shortest_edge": int(round(size / config.crop_pct))},
        do_center_crop=True, crop_size={"height": size, "width": size},
        do_normalize=True, image_mean=config.mean, image_std=config.std, do_convert_rgb=True,
    )


def build_backbone(config: RPGConfig) -> nn.Module:
    """The plain (not yet re-parameterized) backbone a config describes."""
    if config.backbone == "vit":
        from transformers import ViTConfig, ViTForImageClassification

        vit_cfg = ViTConfig(**{**config.vit_config, "num_labels": config.num_labels,
                               "id2label": config.id2label, "label2id": config.label2id})
        return ViTForImageClassification(vit_cfg)
    try:
        import timm
    except ImportError as err:
        raise ImportError(f"this RPG checkpoint has a timm backbone ({config.architecture}): pip install timm") from err
    try:
        return timm.create_model(config.architecture, pretrained=False, num_classes=config.num_labels,
                                 **(config.model_args or {}))
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise ValueError(
                f"unknown timm architecture {config.architecture!r} (timm {timm.__version__}); "
                "check the name with timm.list_models()"
            ) from err
        raise


class RPGRings(CarriesConstruction):
    """Owns the ring(s) (``backbone.rpg.rings.<i>``) and generates the recorded layers' weights; its
    state dicts carry the construction's identity (``backbone.rpg.construction``, see ``identity.py``)."""

    def __init__(self, config: RPGConfig):
        super().__init__()
        if not config.generated_layers or not config.ring_sizes:
            raise ValueError("an RPG checkpoint's config must record generated_layers and ring_sizes")
        self.seed, self.dof = int(config.seed), int(config.dof)
        self.ring_std = (2.0 / config.reference_fan) ** 0.5
        self.ring_sizes = [int(s) for s in config.ring_sizes]
        self.names = [str(d["name"]) for d in config.generated_layers]
        self.rings = nn.ParameterList(nn.Parameter(part) for part in self._initial_ring().split(self.ring_sizes))
        self.slots: list[tuple[int, LayerSlot]] = []
        starts = [0] * len(self.ring_sizes)
        for position, d in enumerate(config.generated_layers):
            r = int(d["ring"])
            if not 0 <= r < len(self.ring_sizes):
                raise ValueError(f"layer {d['name']!r} names ring {r}, but there are {len(self.ring_sizes)}")
            slot = LayerSlot(position, tuple(int(s) for s in d["shape"]), starts[r], float(d["multiplier"]),
                             self.seed, bool(config.permute), bool(config.sign_flip), int(config.generator_version))
            self.slots.append((r, slot))
            starts[r] += slot.numel
        self._identity = config_identity(config)
        self.register_construction()
        self._modules_ref: list[nn.Module] = []
        self._cache = None

    def construction_values(self) -> tuple[int, ...]:
        return self._identity

    def _initial_ring(self) -> torch.Tensor:
        """Kaiming-normal ring for the reference fan, drawn on the CPU from the seed (a fresh model only)."""
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        return torch.randn(self.dof, generator=gen, device="cpu") * self.ring_std

    @torch.no_grad()
    def reset_rings(self, keep_loaded: bool = False) -> None:
        """Re-draw the ring(s) from the seed; ``keep_loaded``: not those transformers loaded from a file."""
        for ring, part in zip(self.rings, self._initial_ring().split(self.ring_sizes), strict=True):
            if not ring.is_meta and not (keep_loaded and getattr(ring, "_is_hf_initialized", False)):
                ring.copy_(part)
        self.invalidate_cache()

    def invalidate_cache(self) -> None:
        self._cache = None

    def _apply(self, fn, recurse=True):
        self.invalidate_cache()
        return super()._apply(fn, recurse)

    def generate_all(self) -> list[torch.Tensor]:
        """Weights of every generated layer in the recorded order (with autograd when it is on).

        Without autograd the result is cached and reused while the rings' values are unchanged
        (compared by value, so in-place optimizer updates of any kind are seen).
        """
        rings = list(self.rings)
        if any(r.is_meta for r in rings):
            return [torch.empty(s.shape, device="meta", dtype=rings[r].dtype) for r, s in self.slots]
        if torch.is_grad_enabled() and any(r.requires_grad for r in rings):
            return [generate_layer(rings[r], s) for r, s in self.slots]
        key = tuple((r.device, r.dtype) for r in rings)
        cached = self._cache
        if cached is not None and cached[0] == key and all(torch.equal(a, b) for a, b in zip(cached[1], rings, strict=True)):
            return cached[2]
        with torch.no_grad():
            weights = [generate_layer(rings[r], s) for r, s in self.slots]
            self._cache = (key, [r.detach().clone() for r in rings], weights)
        return weights

    def materialize(self, *args) -> None:
        """Put the current generated weights on the generated modules (a forward pre-hook of the backbone)."""
        for module, weight in zip(self._modules_ref, self.generate_all(), strict=True):
            module.__dict__["weight"] = weight

    def release(self, *args) -> None:
        """Detach the weights after a forward pass, so the model stays deep-copyable."""
        for module in self._modules_ref:
            w = module.__dict__.get("weight")
            if isinstance(w, torch.Tensor) and w.grad_fn is not None:
                module.__dict__["weight"] = w.detach()


def attach_rings(backbone: nn.Module, config: RPGConfig) -> RPGRings:
    """Replace the recorded layers' ``weight`` parameters of ``backbone`` by ring-generated tensors."""
    rings = RPGRings(config)
    modules = dict(backbone.named_modules())
    targets = []
    for name, (_, slot) in zip(rings.names, rings.slots, strict=True):
        module = modules.get(name)
        weight = module._parameters.get("weight") if module is not None else None
        if weight is None:
            raise ValueError(f"architecture mismatch: the recorded generated layer {name!r} has no weight "
                             f"parameter in {type(backbone).__name__}")
        if tuple(weight.shape) != slot.shape:
            raise ValueError(f"architecture mismatch at {name!r}: recorded shape {slot.shape}, "
                             f"model has {tuple(weight.shape)}")
        targets.append(module)
    rings.to(device=targets[0]._parameters["weight"].device)
    for module in targets:
        del module._parameters["weight"]
    backbone.add_module("rpg", rings)
    rings._modules_ref = targets
    backbone.register_forward_pre_hook(rings.materialize)
    backbone.register_forward_hook(rings.release)
    with torch.no_grad():
        rings.materialize()
    return rings
