"""`RPGConfig`: everything needed to rebuild a ring-only checkpoint's model exactly.

A ring-only checkpoint is ``config.json`` + ``model.safetensors`` holding the ring(s) and the free
tensors.  The config carries the backbone (a timm architecture with its ``model_args``, or a full
``ViTConfig``), the seed, the DoF, the generator version and — once a model was built — the
recorded generated-layer order and ring sizes, so that loading never re-derives the selection
from module names (HF ViT's names changed between transformers v4 and v5, DESIGN.md §4).
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedConfig

from .generator import GENERATOR_VERSION, check_generator_version
from .spec import DEFAULT_TARGET_TYPES, REFERENCE_FAN, SCOPES, RPGSpec

BACKBONES = ("timm", "vit")
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


class RPGConfig(PreTrainedConfig):
    r"""
    backbone (`str`, defaults to `"timm"`):
        `"timm"`: `architecture` names a timm model; `"vit"`: `vit_config` is a transformers `ViTConfig` dict.
    architecture (`str`, defaults to `"resnet34"`):
        timm architecture (backbone `"timm"`); informational for `"vit"`.
    model_args (`dict`, *optional*):
        Extra keyword arguments for `timm.create_model` (e.g. `{"drop_rate": 0.1}`).
    vit_config (`dict`, *optional*):
        The `ViTConfig.to_dict()` of the ViT backbone.
    dof (`int`, defaults to 45000):
        Degrees of freedom: total size of the ring(s).
    seed (`int`, defaults to 0):
        Seed of the pinned permutation/sign construction (and of the fresh ring's init).
    generator_version (`int`):
        Version of the pinned construction; a loader refuses versions it does not implement.
    scope, permute, sign_flip, reference_fan, linear_std, target_types, include, exclude, exclude_stem,
    exclude_head:
        The `RPGSpec` fields (see `rpg_hf.RPGSpec`).
    generated_layers (`list[dict]`, *optional*):
        Recorded generated-layer order: `{"name", "shape", "ring", "multiplier"}` per layer.
    ring_sizes (`list[int]`, *optional*):
        Size of each ring (one for the global scope).
    ring_dtype (`str`, defaults to `"float32"`):
        Storage of the ring in the checkpoint: `"float32"` or `"int8"` (symmetric, dequantized on load).
    ring_block_size (`int`, *optional*):
        int8 storage: one float32 scale per block of this many entries (None: one scale per ring).
    image_size, crop_pct, image_mean, image_std:
        Preprocessing written to the image processor saved beside the model.
    """

    model_type = "rpg"

    backbone: str = "timm"
    architecture: str = "resnet34"
    model_args: dict[str, Any] | None = None
    vit_config: dict[str, Any] | None = None
    dof: int = 45_000
    seed: int = 0
    generator_version: int = GENERATOR_VERSION
    scope: str = "global"
    permute: bool = True
    sign_flip: bool = True
    reference_fan: int = REFERENCE_FAN
    linear_std: float = 0.02
    target_types: list[str] | None = None
    include: list[str] | None = None
    exclude: list[str] | None = None
    exclude_stem: bool | None = None
    exclude_head: bool = True
    generated_layers: list[dict[str, Any]] | None = None
    ring_sizes: list[int] | None = None
    ring_dtype: str = "float32"
    ring_block_size: int | None = None
    image_size: int = 224
    crop_pct: float = 0.875
    image_mean: list[float] | None = None
    image_std: list[float] | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.backbone not in BACKBONES:
            raise ValueError(f"unknown RPG backbone {self.backbone!r}; expected one of {BACKBONES}")
        if self.backbone == "vit" and self.vit_config is None:
            raise ValueError("backbone='vit' needs vit_config (a transformers ViTConfig or its dict)")
        if self.vit_config is not None and not isinstance(self.vit_config, dict):
            self.vit_config = self.vit_config.to_dict()  # a ViTConfig object
        if self.scope not in SCOPES:
            raise ValueError(f"unknown ring scope {self.scope!r}; expected one of {SCOPES}")
        if self.ring_dtype not in ("float32", "int8"):
            raise ValueError(f"unknown ring_dtype {self.ring_dtype!r}; expected 'float32' or 'int8'")
        check_generator_version(self.generator_version)
        if self.ring_sizes is not None and sum(self.ring_sizes) != self.dof:
            raise ValueError(f"config ring_sizes {self.ring_sizes} sum to {sum(self.ring_sizes)}, not dof={self.dof}")
        self.spec  # validates dof, seed, regexes ...  # noqa: B018

    @property
    def spec(self) -> RPGSpec:
        """The `RPGSpec` these fields describe."""
        return RPGSpec(
            dof=self.dof, seed=self.seed, target_types=tuple(self.target_types or DEFAULT_TARGET_TYPES),
            include=tuple(self.include or ()), exclude=tuple(self.exclude or ()), exclude_stem=self.exclude_stem,
            exclude_head=self.exclude_head, scope=self.scope, permute=self.permute, sign_flip=self.sign_flip,
            reference_fan=self.reference_fan, linear_std=self.linear_std, generator_version=self.generator_version,
        )

    @property
    def mean(self) -> list[float]:
        return list(self.image_mean or IMAGENET_MEAN)

    @property
    def std(self) -> list[float]:
        return list(self.image_std or IMAGENET_STD)


__all__ = ["RPGConfig"]
