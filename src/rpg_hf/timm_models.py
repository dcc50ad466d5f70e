"""timm entrypoints: `timm.create_model("rpg_resnet34", dof=45_000, seed=0, num_classes=10)`.

Each returns the real timm model re-parameterized by a ring; the DoF, seed and ring scope are
keyword arguments, every other keyword goes to the underlying timm architecture.
"""

from __future__ import annotations

from timm.models import register_model

from .reparam import reparameterize
from .spec import RPGSpec

RPG_ARCHITECTURES = ("resnet18", "resnet34", "resnet50", "resnet101", "convnext_tiny", "efficientnet_b0",
                     "vit_small_patch16_224", "vit_base_patch16_224")


def create_rpg_model(architecture: str, pretrained: bool = False, *, dof: int = 45_000, seed: int = 0,
                     scope: str = "global", permute: bool = True, sign_flip: bool = True, **kwargs):
    """A timm ``architecture`` whose conv/linear weights are generated from a ring of ``dof`` entries."""
    import timm

    if pretrained:
        raise ValueError(
            f"rpg_{architecture} has no pretrained timm weights; load a ring-only checkpoint with "
            "AutoModelForImageClassification.from_pretrained instead"
        )
    kwargs.pop("pretrained_cfg", None)
    kwargs.pop("pretrained_cfg_overlay", None)
    kwargs.pop("cache_dir", None)
    model = timm.create_model(architecture, pretrained=False, **kwargs)
    return reparameterize(model, RPGSpec(dof=dof, seed=seed, scope=scope, permute=permute, sign_flip=sign_flip))


def _entrypoint(architecture: str):
    def fn(pretrained: bool = False, **kwargs):
        return create_rpg_model(architecture, pretrained, **kwargs)

    fn.__name__ = f"rpg_{architecture}"
    fn.__qualname__ = fn.__name__
    fn.__module__ = __name__  # timm files models by module name
    fn.__doc__ = f"RPG {architecture}: weights generated from a ring (kwargs: dof, seed, scope, permute, sign_flip)."
    return fn


for _arch in RPG_ARCHITECTURES:
    globals()[f"rpg_{_arch}"] = register_model(_entrypoint(_arch))


# --------------------------------------------------------------------------- CIFAR-style ResNets
# Small images (CIFAR 32 px, Fashion-MNIST 28 px) lose most of their resolution in ImageNet's
# 7x7/2 stem + max-pool.  These are timm's ResNet with the usual small-image stem: one 3x3
# stride-1 conv and no max-pool.  Every other ResNet kwarg works, `channels=(16, 32, 64, 128)`
# (narrowed widths) and `in_chans=1` included; they are registered, so
# `RPGConfig(architecture="cifar_resnet18", model_args={...})` builds and reloads them.


def _cifar_resnet(layers: tuple[int, ...], pretrained: bool = False, **kwargs):
    import torch.nn as nn
    from timm.models.resnet import BasicBlock, ResNet

    if pretrained:
        raise ValueError("CIFAR-style ResNets have no pretrained timm weights")
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(key, None)
    width = (kwargs.get("channels") or (64,))[0]
    kwargs.pop("stem_width", None)
    kwargs.pop("stem_type", None)
    # A 'deep' stem makes timm size bn1 and layer1's input as 2 * stem_width = the first stage's
    # width; the deep stem itself is then replaced by the single small-image conv.
    model = ResNet(block=BasicBlock, layers=layers, stem_type="deep", stem_width=max(1, width // 2), **kwargs)
    model.conv1 = nn.Conv2d(kwargs.get("in_chans", 3), model.bn1.num_features, 3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()
    model.pretrained_cfg = {"architecture": f"cifar_resnet{2 * sum(layers) + 2}", "input_size": (3, 32, 32),
                            "num_classes": model.num_classes, "first_conv": "conv1", "classifier": "fc",
                            "mean": (0.5,), "std": (0.5,), "crop_pct": 1.0}
    for info in model.feature_info:  # no stem downsampling: every reduction is 4x smaller
        info["reduction"] = max(1, info["reduction"] // 4)
    return model


@register_model
def cifar_resnet18(pretrained: bool = False, **kwargs):
    """ResNet-18 with a CIFAR-style stem (3x3 stride-1 conv, no max-pool) for 28-32 px images."""
    return _cifar_resnet((2, 2, 2, 2), pretrained, **kwargs)


@register_model
def cifar_resnet34(pretrained: bool = False, **kwargs):
    """ResNet-34 with a CIFAR-style stem (3x3 stride-1 conv, no max-pool) for 28-32 px images."""
    return _cifar_resnet((3, 4, 6, 3), pretrained, **kwargs)
