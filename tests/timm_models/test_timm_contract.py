"""The timm model contract for every ``rpg_*`` name and the CIFAR-style ResNets.

Modelled on timm's own pytorch-image-models/tests/test_models.py (``test_model_default_cfgs``, ``..._non_std``,
``test_model_forward_intermediates``, ``test_model_forward_features``), parametrized over the
registry, at tiny widths and 32-64 px so the file stays fast on one CPU thread.  On top of timm's
checks: ``features_only`` backbones of RPG models equal timm's own feature models built from the
expanded weights, keep the classification model's ring layout (a classification ring loads into
the backbone), and train the ring.
"""

from __future__ import annotations

import copy
import math

import pytest
import timm
import torch
from timm.layers import get_channel_dim, get_spatial_dim
from timm.models import FeatureDictNet, FeatureHookNet, FeatureListNet, get_pretrained_cfg
from timm.utils import ModelEmaV3
from torch import nn

import rpg_hf
from rpg_hf.reparam import RPGGenerator
from rpg_hf.timm_models import create_rpg_model

DOF = 2000
# Small enough for a CPU test, same code paths as the full models (keyed by the timm architecture).
TINY = {
    "resnet18": {"channels": (16, 32, 64, 128)},
    "resnet34": {"channels": (8, 16, 32, 64)},
    "resnet50": {"channels": (8, 16, 32, 64)},
    "resnet101": {"channels": (8, 16, 32, 64)},
    "convnext_tiny": {"depths": (1, 1, 1, 1), "dims": (16, 32, 64, 128)},
    "efficientnet_b0": {},
    "vit_small_patch16_224": {"img_size": 32, "depth": 2},
    "vit_base_patch16_224": {"img_size": 32, "depth": 2, "embed_dim": 96, "num_heads": 2},
    "cifar_resnet18": {"channels": (8, 16, 32, 64)},
    "cifar_resnet34": {"channels": (8, 16, 32, 64)},
}
CIFAR = ("cifar_resnet18", "cifar_resnet34")
NAMES = timm.list_models("rpg_*") + list(CIFAR)
NON_STD = ("vit_*",)  # timm's NON_STD_FILTERS: token outputs, no pool_size


def _arch(name: str) -> str:
    return name.removeprefix("rpg_")


def _is_vit(name: str) -> bool:
    return _arch(name).startswith("vit_")


def _size(name: str) -> int:
    return 32 if _is_vit(name) or _arch(name) in CIFAR else 64


def _x(name: str, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, _size(name), _size(name), generator=torch.Generator().manual_seed(0))


def _create(name: str, **kwargs) -> nn.Module:
    """A registry model at its tiny size (``rpg_*`` with ``dof``; cifar_* as plain timm models)."""
    kwargs = {**TINY[_arch(name)], **kwargs}
    if name.startswith("rpg_"):
        kwargs.setdefault("dof", DOF)
    return timm.create_model(name, **kwargs)


def _rpg(arch: str, **kwargs) -> nn.Module:
    """The RPG model of a timm architecture (``rpg_<arch>``, or create_rpg_model for cifar_*)."""
    kwargs = {"dof": DOF, **TINY[arch], **kwargs}
    if f"rpg_{arch}" in timm.list_models("rpg_*"):
        return timm.create_model(f"rpg_{arch}", **kwargs)
    return create_rpg_model(arch, **kwargs)


def _generator(model: nn.Module) -> RPGGenerator:
    gens = [m for m in model.modules() if isinstance(m, RPGGenerator)]
    assert len(gens) == 1, f"{type(model).__name__} holds {len(gens)} ring generators"
    return gens[0]


def _outputs(out) -> list[torch.Tensor]:
    return list(out.values()) if isinstance(out, dict) else list(out)


def _source_keys(key: str):
    """Where a feature model's state key lives in the full model (timm's wrappers rename)."""
    yield key
    for prefix in ("model.", "body.", "graph_module."):
        if key.startswith(prefix):
            key = key[len(prefix):]
            yield key
    head, _, rest = key.partition(".")
    if "_" in head:  # flatten_sequential: stages_0.blocks... <- stages.0.blocks...
        yield head.replace("_", ".", 1) + "." + rest


def _load_from(full: nn.Module, feat: nn.Module) -> None:
    """Load a full (classification) model's state into a features model; every key must exist."""
    src = full.state_dict()
    state = {}
    for key in feat.state_dict():
        found = [k for k in _source_keys(key) if k in src]
        assert found, f"features-model tensor {key!r} has no counterpart in the classification model"
        state[key] = src[found[0]]
    feat.load_state_dict(state, strict=True)


def _plain_features(arch: str, feature_kwargs: dict) -> nn.Module:
    """timm's own features model of the plain architecture."""
    cls = feature_kwargs.get("feature_cls")
    if arch.startswith("efficientnet") and cls in ("list", "dict"):
        # timm's efficientnet cannot build these itself (its return layers sit inside `blocks`):
        # the same timm wrapper, with the flattening rpg_hf's builder uses
        wrapper = FeatureListNet if cls == "list" else FeatureDictNet
        return wrapper(timm.create_model(arch, **TINY[arch]), out_indices=feature_kwargs.get("out_indices", (0, 1, 2, 3, 4)),
                       flatten_sequential=True)
    return timm.create_model(arch, features_only=True, **TINY[arch], **feature_kwargs)


# --------------------------------------------------------------------------- registry and cfgs


def test_registry_is_covered():
    assert {_arch(n) for n in timm.list_models("rpg_*")} | set(CIFAR) == set(TINY), "give new entrypoints a TINY size"
    assert not timm.list_pretrained("rpg_*") and not timm.list_pretrained("cifar_*")  # no timm weights exist


@pytest.mark.parametrize("name", NAMES)
def test_default_cfg_is_complete(name):
    cfg = get_pretrained_cfg(name)
    assert cfg is not None and cfg.architecture == name and not cfg.has_weights
    assert not (cfg.url or cfg.hf_hub_id or cfg.file)
    for key in ("input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std", "num_classes",
                "first_conv", "classifier"):
        assert getattr(cfg, key) is not None, f"{name}: default cfg lacks {key}"
    assert len(cfg.mean) == len(cfg.std) == cfg.input_size[0]
    if _is_vit(name):
        assert cfg.fixed_input_size and cfg.pool_size is None  # as timm's ViTs
    else:
        assert cfg.pool_size is not None
    if name.startswith("rpg_"):  # the underlying architecture's preprocessing and layout, field by field
        base = get_pretrained_cfg(_arch(name))
        for key in ("input_size", "test_input_size", "fixed_input_size", "interpolation", "crop_pct",
                    "test_crop_pct", "crop_mode", "mean", "std", "num_classes", "pool_size", "first_conv",
                    "classifier"):
            assert getattr(cfg, key) == getattr(base, key), key
    model = _create(name)
    assert model.pretrained_cfg == cfg.to_dict() and model.default_cfg is model.pretrained_cfg
    assert timm.models.get_pretrained_cfg_value(name, "input_size") == cfg.input_size
    data = timm.data.resolve_model_data_config(model)
    assert (data["input_size"], data["mean"], data["std"], data["crop_pct"]) == (
        cfg.input_size, cfg.mean, cfg.std, cfg.crop_pct)
    state = model.state_dict()
    modules = dict(model.named_modules())
    classifiers = (cfg.classifier,) if isinstance(cfg.classifier, str) else cfg.classifier
    for c in classifiers:  # the head stays free: timm's pretrained-head handling finds it
        assert f"{c}.weight" in state, f"{c} not in model params"
    first = (cfg.first_conv,) if isinstance(cfg.first_conv, str) else cfg.first_conv
    for fc in first:  # a CNN stem is free; a ViT's patch embedding is generated (DESIGN.md §1)
        assert fc in modules and modules[fc].weight is not None
        assert f"{fc}.weight" in state or hasattr(modules[fc], "_rpg_position")
    if not _is_vit(name):  # pool_size is input_size / the last feature's reduction, as in timm
        red = model.feature_info[-1]["reduction"]
        assert tuple(cfg.pool_size) == tuple(s // red for s in cfg.input_size[1:])


def test_pretrained_cfg_overlay_and_tiny_input_chans():
    model = _create("rpg_resnet18", pretrained_cfg_overlay=dict(input_size=(3, 64, 64), crop_pct=1.0))
    assert model.pretrained_cfg["input_size"] == (3, 64, 64) and model.pretrained_cfg["crop_pct"] == 1.0
    assert model.pretrained_cfg["architecture"] == "rpg_resnet18"
    one = _create("cifar_resnet18", in_chans=1, num_classes=10)
    assert one.pretrained_cfg["input_size"] == (1, 32, 32) and one.pretrained_cfg["mean"] == (0.5,)
    assert one(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError, match="no pretrained timm weights"):
        timm.create_model("cifar_resnet18", pretrained=True)
    # any other timm architecture: the default cfg derived from the plain one
    other = create_rpg_model("cifar_resnet18", **TINY["cifar_resnet18"], dof=DOF)
    assert other.pretrained_cfg["architecture"] == "rpg_cifar_resnet18"
    assert other.pretrained_cfg["input_size"] == (3, 32, 32) and other.pretrained_cfg["pool_size"] == (4, 4)


# --------------------------------------------------------------------------- model contract


@pytest.mark.parametrize("name", NAMES)
def test_model_contract(name):
    """timm's test_model_default_cfgs(_non_std), at a tiny input size."""
    model = _create(name).eval()
    assert model.num_classes > 0 and model.num_features > 0 and model.head_hidden_size > 0
    x = _x(name)
    with torch.no_grad():
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
        logits = model.forward_head(feats)
        assert torch.equal(model(x), logits) and logits.shape == (2, model.num_classes)
        assert pre.shape == (2, model.head_hidden_size)
        if _is_vit(name):
            assert feats.shape[-1] == model.num_features  # NLC tokens
        else:
            red = model.feature_info[-1]["reduction"]
            assert feats.shape[1:] == (model.num_features, math.ceil(x.shape[2] / red), math.ceil(x.shape[3] / red))
        model.reset_classifier(0)
        assert model.num_classes == 0
        assert torch.allclose(model(x), pre, atol=1e-6)
        if not _is_vit(name):
            model.reset_classifier(0, "")  # no pooling: unpooled maps (a ConvNeXt head still norms them)
            assert model(x).shape == feats.shape
    headless = _create(name, num_classes=0, **({} if _is_vit(name) else {"global_pool": ""})).eval()
    with torch.no_grad():
        assert headless(x).ndim == (2 if _is_vit(name) else 4)
    if name.startswith("rpg_"):  # the head is free: the ring layout does not depend on num_classes
        assert _generator(headless).layers == _generator(model).layers


@pytest.mark.parametrize("name", NAMES)
def test_forward_intermediates(name):
    """timm's test_model_forward_intermediates, plus grad checkpointing on the ring."""
    model = _create(name).eval()
    info = timm.models.FeatureInfo(model.feature_info, len(model.feature_info))
    output_fmt = getattr(model, "output_fmt", "NCHW")
    spatial, channel = get_spatial_dim(output_fmt), get_channel_dim(output_fmt)
    x = _x(name, batch=1)
    with torch.no_grad():
        output, intermediates = model.forward_intermediates(x, output_fmt=output_fmt)
        assert len(intermediates) == len(info.channels()) >= 2
        for r, c, o in zip(info.reduction(), info.channels(), intermediates, strict=True):
            assert o.shape[channel] == c
            assert o.shape[spatial[0]] <= math.ceil(x.shape[2] / r) and o.shape[spatial[1]] <= math.ceil(x.shape[3] / r)
        assert torch.allclose(output, model.forward_features(x))
    # with gradients on (checkpointing does nothing without them), checkpointed forward_intermediates
    # give the same output and the same gradients (the ring's, where the model has one)
    outputs, grads = [], []
    for enable in (False, True):
        model.set_grad_checkpointing(enable)
        model.zero_grad()
        out, inter = model.forward_intermediates(x, output_fmt=output_fmt)
        (out.square().mean() + sum(i.square().mean() for i in inter)).backward()
        outputs.append(out.detach())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert torch.allclose(outputs[0], output, rtol=1e-4, atol=1e-5)
    assert torch.allclose(outputs[0], outputs[1], rtol=1e-4, atol=1e-5)
    assert grads[0].abs().sum() > 0 and torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize(("name", "kwargs"), [
    ("rpg_resnet18", {}), ("rpg_convnext_tiny", {}), ("rpg_vit_small_patch16_224", {}),
    ("rpg_resnet18", {"features_only": True}), ("rpg_convnext_tiny", {"features_only": True}),
    ("rpg_efficientnet_b0", {"features_only": True, "out_indices": (1, 2)}),
    ("rpg_vit_small_patch16_224", {"features_only": True, "out_indices": (1,)}),
])
def test_grad_checkpointing_trains_the_ring(name, kwargs):
    model = _create(name, **kwargs).eval()  # eval: BN statistics fixed, the ring still trains (grad enabled)
    x = _x(name)
    grads = []
    for enable in (False, True):
        # timm's FeatureGetterNet has no set_grad_checkpointing: the wrapped model's does the job
        (model.model if type(model).__name__ == "FeatureGetterNet" else model).set_grad_checkpointing(enable)
        model.zero_grad()
        out = model(x)
        sum(o.square().mean() for o in (_outputs(out) if isinstance(out, (list, tuple, dict)) else [out])).backward()
        grads.append(_generator(model).rings[0].grad.clone())
    assert grads[0].abs().sum() > 0 and torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-7)


# --------------------------------------------------------------------------- features_only

FEATURE_CASES = [
    ("resnet18", {}),
    ("resnet18", {"feature_cls": "dict", "out_indices": (1, 3)}),
    ("resnet18", {"feature_cls": "hook", "out_indices": (0, 4)}),
    ("resnet18", {"feature_cls": "getter", "out_indices": (2, 4)}),
    ("resnet18", {"feature_cls": "fx", "out_indices": (1, 2)}),
    ("resnet50", {}),
    ("convnext_tiny", {}),
    ("convnext_tiny", {"feature_cls": "hook", "out_indices": (0, 3)}),
    ("convnext_tiny", {"feature_cls": "getter", "out_indices": (1, 2)}),
    ("efficientnet_b0", {}),
    ("efficientnet_b0", {"out_indices": (1, 3), "feature_location": "expansion"}),
    ("efficientnet_b0", {"feature_cls": "list", "out_indices": (2, 4)}),
    pytest.param("efficientnet_b0", {"feature_cls": "getter", "out_indices": (0, 3)}, marks=pytest.mark.slow),
    ("cifar_resnet18", {}),
    ("vit_small_patch16_224", {"out_indices": (0, 1)}),
    pytest.param("resnet34", {}, marks=pytest.mark.slow),
    pytest.param("resnet101", {"feature_cls": "dict", "out_indices": (3, 4)}, marks=pytest.mark.slow),
    pytest.param("efficientnet_b0", {"feature_cls": "dict"}, marks=pytest.mark.slow),
    pytest.param("efficientnet_b0", {"feature_cls": "hook", "out_indices": (4,)}, marks=pytest.mark.slow),
    pytest.param("convnext_tiny", {"feature_cls": "dict"}, marks=pytest.mark.slow),
    pytest.param("convnext_tiny", {"feature_cls": "fx"}, marks=pytest.mark.slow),
    pytest.param("cifar_resnet34", {"feature_cls": "hook"}, marks=pytest.mark.slow),
    pytest.param("vit_base_patch16_224", {"out_indices": 1}, marks=pytest.mark.slow),
    pytest.param("vit_small_patch16_224", {"feature_cls": "fx", "out_indices": (1,)}, marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("arch", "feature_kwargs"), FEATURE_CASES)
def test_features_only_equals_plain_timm_backbone(arch, feature_kwargs):
    torch.manual_seed(0)
    classifier = _rpg(arch, num_classes=7)
    with torch.no_grad():  # "trained": the ring and a norm layer moved away from their init
        gen = _generator(classifier)
        gen.rings[0].add_(0.5 * gen.rings[0].std() * torch.randn_like(gen.rings[0]))
        norm = next(m for m in classifier.modules() if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)))
        norm.bias.add_(0.1)
    torch.manual_seed(1)  # a different init: everything compared below comes from the classifier
    backbone = _rpg(arch, features_only=True, **feature_kwargs)

    # the classification model's ring layout, so its ring and free tensors load into the backbone
    gen_b = _generator(backbone)
    assert gen_b.layers == gen.layers and gen_b.ring_sizes == gen.ring_sizes and gen_b.spec == gen.spec
    _load_from(classifier, backbone)
    assert torch.equal(gen_b.rings[0], gen.rings[0])

    plain = _plain_features(arch, feature_kwargs)
    _load_from(rpg_hf.expand(classifier), plain)
    assert type(backbone) is type(plain) or (type(plain).__name__, type(backbone)) == ("EfficientNetFeatures",
                                                                                      FeatureHookNet)
    for what in ("channels", "reduction", "module_name"):
        assert getattr(backbone.feature_info, what)() == getattr(plain.feature_info, what)(), what
    assert "num_classes" not in backbone.pretrained_cfg and backbone.pretrained_cfg["architecture"] == f"rpg_{arch}"

    x = _x(arch)
    backbone.eval(), plain.eval()
    with torch.no_grad():
        ours, theirs = _outputs(backbone(x)), _outputs(plain(x))
    assert len(ours) == len(theirs) == len(backbone.feature_info.channels())
    for a, b, c in zip(ours, theirs, backbone.feature_info.channels(), strict=True):
        assert a.shape == b.shape and c in (a.shape[1], a.shape[-1])  # NCHW maps, or fx's raw ViT tokens
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)

    backbone.train()  # the ring trains through the features
    sum(o.square().mean() for o in _outputs(backbone(x))).backward()
    grad = gen_b.rings[0].grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert any(p is gen_b.rings[0] for p in backbone.parameters())  # the optimizer sees it
    assert any(k.endswith("rpg.rings.0") for k in backbone.state_dict())


@pytest.mark.parametrize("name", [n for n in NAMES if not _is_vit(n)])
def test_forward_features_default(name):
    """timm's test_model_forward_features: features_only with the architecture's defaults."""
    model = _create(name, features_only=True).eval()
    expected = model.feature_info.channels()
    assert len(expected) >= 4
    with torch.no_grad():
        outputs = _outputs(model(_x(name, batch=1)))
    assert [o.shape[1] for o in outputs] == expected and all(not o.isnan().any() for o in outputs)


def test_efficientnet_feature_location_needs_hooks():
    with pytest.raises(ValueError, match="feature_cls='hook'"):
        _create("rpg_efficientnet_b0", features_only=True, feature_location="expansion", feature_cls="list")


def test_vit_features_only_default_out_indices():
    model = _create("rpg_vit_small_patch16_224", features_only=True, depth=4).eval()  # timm: last 3 blocks
    assert model.feature_info.module_name() == ["blocks.1", "blocks.2", "blocks.3"]
    with torch.no_grad():
        assert [tuple(o.shape) for o in model(_x("rpg_vit_small_patch16_224"))] == [(2, 384, 2, 2)] * 3


# --------------------------------------------------------------------------- copies


@pytest.mark.parametrize("feature_cls", [None, "hook", "getter"])
def test_ema_and_deepcopy_of_a_backbone(feature_cls):
    kwargs = {"features_only": True, **({"feature_cls": feature_cls} if feature_cls else {})}
    model = _create("rpg_resnet18", **kwargs).eval()
    x = _x("rpg_resnet18", batch=1)
    ema = ModelEmaV3(model, decay=0.5)
    gen, ema_gen = _generator(model), _generator(ema.module)
    assert ema_gen is not gen
    assert all(m._rpg_generator is ema_gen for m in ema.module.modules() if hasattr(m, "_rpg_position"))
    with torch.no_grad():
        before = _outputs(model(x))
        for a, b in zip(_outputs(ema.module(x)), before, strict=True):
            assert torch.equal(a, b)
        old = gen.rings[0].detach().clone()
        gen.rings[0].mul_(2.0)  # an optimizer step on the live model
        ema.update(model)
        torch.testing.assert_close(ema_gen.rings[0], 1.5 * old)
        reference = copy.deepcopy(model)
        _generator(reference).rings[0].copy_(ema_gen.rings[0])
        for a, b in zip(_outputs(ema.module(x)), _outputs(reference(x)), strict=True):
            torch.testing.assert_close(a, b)  # the EMA copy serves weights from its own, updated ring
        assert not torch.allclose(_outputs(model(x))[-1], before[-1])  # ... the live model from the live ring


def test_ema_of_a_classifier_and_reset_classifier():
    model = _create("rpg_convnext_tiny", num_classes=5).eval()
    ema = ModelEmaV3(model, decay=0.9)
    x = _x("rpg_convnext_tiny")
    with torch.no_grad():
        assert torch.equal(ema.module(x), model(x))
    model.reset_classifier(3)
    assert model(x).shape == (2, 3) and _generator(model).layers == _generator(ema.module).layers


def test_expand_a_backbone():
    model = _create("rpg_convnext_tiny", features_only=True).eval()
    plain = rpg_hf.expand(model)
    x = _x("rpg_convnext_tiny")
    with torch.no_grad():
        for a, b in zip(plain(x), model(x), strict=True):
            torch.testing.assert_close(a, b)
