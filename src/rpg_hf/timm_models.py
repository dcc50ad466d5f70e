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
