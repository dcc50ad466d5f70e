"""timm entrypoints: `timm.create_model("rpg_resnet34", dof=45_000, seed=0, num_classes=10)`.

Each returns the real timm model re-parameterized by a ring; every `RPGSpec` field (``dof``,
``seed``, ``scope``, ``permute``, ``include``, ``exclude_head``, ...) is a keyword argument, every
other keyword goes to the underlying timm architecture.  The models keep
timm's whole contract: a registered default cfg per name (the architecture's preprocessing, no
weight source), ``forward_features`` / ``forward_head`` / ``forward_intermediates``,
``feature_info``, and ``features_only=True`` with ``out_indices`` / ``feature_cls``.

A features model is the *full* network re-parameterized, then wrapped by timm's own feature
wrapper (as ``timm.models.build_model_with_cfg`` does), so its ring layout — which layers are
generated, in which order — is the classification model's: a ring trained for classification
loads into the backbone.  (timm builds some backbones as other classes — ``EfficientNetFeatures``
lacks the head conv; those are reproduced with hooks on the full network.)
"""

from __future__ import annotations

import dataclasses
from typing import Any

from timm.models import (
    FeatureHookNet,
    PretrainedCfg,
    build_model_with_cfg,
    generate_default_cfgs,
    get_pretrained_cfg,
    model_entrypoint,
    register_model,
    split_model_name_tag,
)

from rpg_hf.reparam import GENERATOR_ATTR, get_generator, reparameterize
from rpg_hf.spec import SPEC_FIELDS, RPGSpec, spec_kwargs

DEFAULT_DOF = 45_000

RPG_ARCHITECTURES = ("resnet18", "resnet34", "resnet50", "resnet101", "convnext_tiny", "efficientnet_b0",
                     "vit_small_patch16_224", "vit_base_patch16_224")

# --------------------------------------------------------------------------- default cfgs

# An RPG model has no timm weights: its cfg is the architecture's, without a weight source or the
# weights' provenance.  (Ring-only checkpoints are loaded from hf-hub: / local-dir:, see timm_hub.)
_NO_WEIGHTS = dict(url="", file=None, state_dict=None, hf_hub_id=None, hf_hub_filename=None, source=None,
                   custom_load=False, architecture=None, tag=None, license="apache-2.0", origin_url=None,
                   paper_name="Compact and Optimal Deep Learning with Recurrent Parameter Generators",
                   paper_ids="arXiv:2107.07110", notes=None, description=None)


def rpg_default_cfg(architecture: str, /, **overrides: Any) -> PretrainedCfg:
    """timm's default cfg of ``architecture`` (input size, pool size, crop, mean/std, first conv,
    classifier, ...) with no weight source: the cfg of its RPG counterpart."""
    base = get_pretrained_cfg(architecture) or PretrainedCfg()
    return dataclasses.replace(base, **{**_NO_WEIGHTS, **overrides})


# CIFAR-style ResNets (below): ResNet's cfg at 32 px, no stem downsampling (8x overall).
_CIFAR_CFG = dict(input_size=(3, 32, 32), test_input_size=None, min_input_size=None, pool_size=(4, 4),
                  test_pool_size=None, crop_pct=1.0, test_crop_pct=None, interpolation="bilinear",
                  mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), first_conv="conv1", classifier="fc",
                  paper_name=None, paper_ids=None)

# Read by timm's register_model: `timm.models.get_pretrained_cfg("rpg_resnet18")` and the model's
# `pretrained_cfg` come from here.
default_cfgs = generate_default_cfgs({
    **{f"rpg_{arch}": rpg_default_cfg(arch) for arch in RPG_ARCHITECTURES},
    **{f"cifar_resnet{depth}": rpg_default_cfg("resnet18", **_CIFAR_CFG) for depth in (18, 34)},
})


# --------------------------------------------------------------------------- features_only


def _family(architecture: str) -> str:
    """The timm module that defines ``architecture`` (``resnet``, ``convnext``, ``vision_transformer``...)."""
    return model_entrypoint(architecture).__module__.rsplit(".", 1)[-1]


def _feature_cfg(architecture: str) -> dict[str, Any]:
    """The ``feature_cfg`` timm's own ``_create_<family>`` passes to ``build_model_with_cfg``."""
    return {
        "convnext": dict(out_indices=(0, 1, 2, 3), flatten_sequential=True),
        # timm builds EfficientNetFeatures; on the full network the same maps come from hooks.
        # flatten_sequential also makes feature_cls='list'/'dict' work (timm's own cannot: its
        # return layers sit inside `blocks`)
        "efficientnet": dict(flatten_sequential=True),
        "vision_transformer": dict(out_indices=3, feature_cls="getter"),
    }.get(_family(architecture), {})


def _efficientnet_feature_info(architecture: str, location: str, kwargs: dict[str, Any]) -> list[dict]:
    """Feature info of timm's ``EfficientNetFeatures(feature_location=location)`` (built on meta)."""
    import timm

    probe = timm.create_model(architecture, features_only=True, feature_location=location, device="meta",
                              **{k: v for k, v in kwargs.items() if k not in ("device", "dtype")})
    return [dict(info) for info in probe.feature_info.info]


def build_rpg_model(architecture: str, spec: RPGSpec, *, pretrained_cfg: Any = None,
                    pretrained_cfg_overlay: dict | None = None, cache_dir: Any = None, **kwargs):
    """The timm ``architecture`` re-parameterized by ``spec``, built through timm's
    ``build_model_with_cfg`` as ``rpg_<architecture>``: its default cfg, ``pretrained_cfg`` /
    ``pretrained_cfg_overlay`` and ``features_only`` / ``out_indices`` / ``feature_cls`` behave as
    for any timm model.  The full network is always built and re-parameterized before a feature
    wrapper keeps the part it needs, so the ring layout never depends on ``features_only``.
    """
    import timm

    name, tag = split_model_name_tag(architecture)
    variant = f"rpg_{name}"
    if pretrained_cfg is None and (tag or get_pretrained_cfg(variant) is None):  # any other timm architecture
        pretrained_cfg = rpg_default_cfg(architecture, architecture=variant).to_dict()
    feature_cfg = kwargs.pop("feature_cfg", None) or _feature_cfg(architecture)
    location = None
    if kwargs.get("features_only") and _family(architecture) == "efficientnet":
        location = kwargs.pop("feature_location", "bottleneck")
        feature_cls = kwargs.setdefault("feature_cls", "hook")  # what EfficientNetFeatures computes
        hooks = feature_cls is FeatureHookNet or (isinstance(feature_cls, str) and "hook" in feature_cls.lower())
        if location not in ("", "bottleneck") and not hooks:
            raise ValueError(f"feature_location={location!r} takes the features with hooks, as timm's "
                             f"EfficientNetFeatures does: use feature_cls='hook' (got {feature_cls!r})")

    def build(**model_kwargs):
        model = timm.create_model(architecture, pretrained=False, **model_kwargs)
        if location not in (None, "", "bottleneck"):
            model.feature_info = _efficientnet_feature_info(architecture, location, model_kwargs)
        built.append(reparameterize(model, spec))
        return built[-1]

    built: list = []
    model = build_model_with_cfg(build, variant, False, pretrained_cfg=pretrained_cfg,
                                 pretrained_cfg_overlay=pretrained_cfg_overlay, feature_cfg=dict(feature_cfg),
                                 cache_dir=cache_dir, **kwargs)
    generator = get_generator(built[-1])
    if not any(m is generator for m in model.modules()):
        # feature_cls='fx' keeps only the traced modules: the generated layers still read the
        # ring, but it would no longer be a parameter (optimizer, state_dict) of the wrapper
        children = list(model._modules.items())
        model._modules.clear()
        model._modules[GENERATOR_ATTR] = generator
        model._modules.update(children)
    return model


def create_rpg_model(architecture: str, pretrained: bool = False, **kwargs):
    """A timm ``architecture`` whose conv/linear weights are generated from a ring of ``dof`` entries.

    The `RPGSpec` fields among ``kwargs`` (``dof``, default 45,000; ``seed``, ``scope``, ``include``,
    ``exclude_head``, ...; ``None`` meaning the default) make the spec, the others go to timm.
    ``pretrained=True`` loads the ring-only checkpoint the pretrained cfg names; spec fields given
    then must agree with the checkpoint's.
    """
    if pretrained:  # a ring-only checkpoint named by pretrained_cfg(_overlay) file= / hf_hub_id= (rpg_hf.timm_models.hub)
        from rpg_hf.timm_models.hub import load_pretrained_entrypoint

        return load_pretrained_entrypoint(f"rpg_{architecture}", architecture, **kwargs)
    spec = RPGSpec(**{"dof": DEFAULT_DOF, **spec_kwargs(kwargs)})
    return build_rpg_model(architecture, spec, **{k: v for k, v in kwargs.items() if k not in SPEC_FIELDS})


def _entrypoint(architecture: str):
    def fn(pretrained: bool = False, **kwargs):
        return create_rpg_model(architecture, pretrained, **kwargs)

    fn.__name__ = f"rpg_{architecture}"
    fn.__qualname__ = fn.__name__
    fn.__module__ = __name__  # timm's register_model reads the default cfg from this module's `default_cfgs`
    fn.__doc__ = (f"RPG {architecture}: weights generated from a ring.  RPGSpec kwargs: {', '.join(SPEC_FIELDS)} "
                  f"(dof defaults to {DEFAULT_DOF:,}); the others go to timm's {architecture}.")
    return fn


for _arch in RPG_ARCHITECTURES:
    globals()[f"rpg_{_arch}"] = register_model(_entrypoint(_arch))


# --------------------------------------------------------------------------- CIFAR-style ResNets
# Small images (CIFAR 32 px, Fashion-MNIST 28 px) lose most of their resolution in ImageNet's
# 7x7/2 stem + max-pool.  These are timm's ResNet with the usual small-image stem: one 3x3
# stride-1 conv and no max-pool.  Every other ResNet kwarg works, `channels=(16, 32, 64, 128)`
# (narrowed widths) and `in_chans=1` included; they are registered, so
# `RPGConfig(architecture="cifar_resnet18", model_args={...})` builds and reloads them.


def _cifar_network(layers: tuple[int, ...], **kwargs):
    import torch.nn as nn
    from timm.models.resnet import BasicBlock, ResNet

    width = (kwargs.get("channels") or (64,))[0]
    kwargs.pop("stem_width", None)
    kwargs.pop("stem_type", None)
    # A 'deep' stem makes timm size bn1 and layer1's input as 2 * stem_width = the first stage's
    # width; the deep stem itself is then replaced by the single small-image conv.
    model = ResNet(block=BasicBlock, layers=layers, stem_type="deep", stem_width=max(1, width // 2), **kwargs)
    model.conv1 = nn.Conv2d(kwargs.get("in_chans", 3), model.bn1.num_features, 3, stride=1, padding=1, bias=False,
                            device=kwargs.get("device"), dtype=kwargs.get("dtype"))
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()
    for info in model.feature_info:  # no stem downsampling: every reduction is 4x smaller
        info["reduction"] = max(1, info["reduction"] // 4)
    return model


def _cifar_resnet(layers: tuple[int, ...], pretrained: bool = False, **kwargs):
    """Built like any timm model (default cfg, ``features_only``, pretrained ``file=`` / hub weights)."""
    from functools import partial

    from timm.models._builder import resolve_pretrained_cfg

    variant = f"cifar_resnet{2 * sum(layers) + 2}"
    if pretrained and not resolve_pretrained_cfg(variant, kwargs.get("pretrained_cfg"),
                                                 kwargs.get("pretrained_cfg_overlay")).has_weights:
        raise ValueError("CIFAR-style ResNets have no pretrained timm weights")
    model = build_model_with_cfg(partial(_cifar_network, layers), variant, pretrained, **kwargs)
    chans = kwargs.get("in_chans", 3)
    cfg = model.pretrained_cfg
    if chans != len(cfg["mean"]):  # e.g. Fashion-MNIST's one channel: one mean/std per input channel
        cfg.update(input_size=(chans, *cfg["input_size"][1:]), mean=(cfg["mean"][0],) * chans,
                   std=(cfg["std"][0],) * chans)
    return model


@register_model
def cifar_resnet18(pretrained: bool = False, **kwargs):
    """ResNet-18 with a CIFAR-style stem (3x3 stride-1 conv, no max-pool) for 28-32 px images."""
    return _cifar_resnet((2, 2, 2, 2), pretrained, **kwargs)


@register_model
def cifar_resnet34(pretrained: bool = False, **kwargs):
    """ResNet-34 with a CIFAR-style stem (3x3 stride-1 conv, no max-pool) for 28-32 px images."""
    return _cifar_resnet((3, 4, 6, 3), pretrained, **kwargs)
