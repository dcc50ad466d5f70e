"""`RPGConfig` of a ring-only RPG checkpoint (Recurrent Parameter Generators, WACV 2023).

rpg_hf writes this file into every checkpoint it saves, next to ``modeling_rpg.py`` (and the
``construction.py`` whose ``generator_version`` check it uses), so that
``AutoModelForImageClassification.from_pretrained(repo, trust_remote_code=True)`` works with only
torch + transformers (+ timm for timm backbones).  It needs no rpg_hf: where rpg_hf is installed and
imported, transformers uses rpg_hf's own registered classes instead (they build on this file).

The config carries everything needed to rebuild the model exactly: the backbone (a timm
architecture with its ``model_args``, or a full ``ViTConfig`` dict), the seed, the DoF, the pinned
``generator_version`` and the recorded generated-layer order and ring sizes.

``config.json`` is also readable by timm (``timm.create_model("hf-hub:org/name", pretrained=True)``
after ``import rpg_hf``): its top-level ``architecture`` is written as ``"rpg.<architecture>"`` (timm's
generic RPG entrypoint ``rpg`` with the backbone as tag), ``model_args`` is always a dict and a
``pretrained_cfg`` holds the preprocessing timm reads (plus ``image_processor_type``, which keeps
transformers' AutoImageProcessor on ``preprocessor_config.json`` for such a folder).  On load the ``rpg.`` prefix is stripped again,
so ``config.architecture`` is always the plain backbone name.
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedConfig

# the pinned construction's version, checked by the construction itself (rpg_hf.core.construction, shipped)
from .construction import GENERATOR_VERSION, SUPPORTED_GENERATOR_VERSIONS, check_generator_version

BACKBONES = ("timm", "vit")
SCOPES = ("global", "stage", "block")
RING_DTYPES = ("float32", "int8")
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
REFERENCE_FAN = 512 * 3 * 3
TIMM_PREFIX = "rpg."  # config.json's `architecture` names timm's generic RPG entrypoint, the backbone as tag
# transformers reads a local folder whose config.json has `pretrained_cfg` as a timm folder and takes its
# image-processor settings from config.json: this key sends AutoImageProcessor to preprocessor_config.json.
IMAGE_PROCESSOR_TYPE = "BitImageProcessor"
DERIVED_KEYS = ("pretrained_cfg", "image_processor_type")  # written by to_dict(), recomputed on every save


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
        The `rpg_hf.RPGSpec` fields.
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
        for key in DERIVED_KEYS:  # timm's / AutoImageProcessor's view of these fields, recomputed by to_dict()
            kwargs.pop(key, None)
        super().__post_init__(**kwargs)
        if isinstance(self.architecture, str) and self.architecture.startswith(TIMM_PREFIX):
            self.architecture = self.architecture[len(TIMM_PREFIX):]
        if self.backbone not in BACKBONES:
            raise ValueError(f"unknown RPG backbone {self.backbone!r}; expected one of {BACKBONES}")
        if self.backbone == "vit" and self.vit_config is None:
            raise ValueError("backbone='vit' needs vit_config (a transformers ViTConfig or its dict)")
        if self.vit_config is not None and not isinstance(self.vit_config, dict):
            self.vit_config = self.vit_config.to_dict()  # a ViTConfig object
        if self.scope not in SCOPES:
            raise ValueError(f"unknown ring scope {self.scope!r}; expected one of {SCOPES}")
        if self.ring_dtype not in RING_DTYPES:
            raise ValueError(f"unknown ring_dtype {self.ring_dtype!r}; expected 'float32' or 'int8'")
        check_generator_version(self.generator_version)
        if isinstance(self.dof, bool) or not isinstance(self.dof, int) or self.dof <= 0:
            raise ValueError(f"RPG dof must be a positive int, got {self.dof!r}")
        if self.ring_sizes is not None and sum(self.ring_sizes) != self.dof:
            raise ValueError(f"config ring_sizes {self.ring_sizes} sum to {sum(self.ring_sizes)}, not dof={self.dof}")

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs):
        """A saved model's config (it records ``generated_layers``) that names no ``generator_version``
        predates version 2, the default of new models: it was built with version 1."""
        if config_dict.get("generated_layers") and "generator_version" not in config_dict:
            config_dict = {**config_dict, "generator_version": 1}
        return super().from_dict(config_dict, **kwargs)

    @property
    def mean(self) -> list[float]:
        return list(self.image_mean or IMAGENET_MEAN)

    @property
    def std(self) -> list[float]:
        return list(self.image_std or IMAGENET_STD)

    @property
    def in_chans(self) -> int:
        if self.backbone == "vit":
            return int((self.vit_config or {}).get("num_channels", 3))
        return int((self.model_args or {}).get("in_chans", 3))

    def timm_pretrained_cfg(self) -> dict[str, Any]:
        """The ``pretrained_cfg`` timm reads from config.json (valid `timm.models.PretrainedCfg` fields only)."""
        labels = self.id2label or {}
        return {
            "architecture": TIMM_PREFIX + self.architecture,
            "num_classes": self.num_labels,
            "input_size": [self.in_chans, self.image_size, self.image_size],
            "crop_pct": self.crop_pct,
            "mean": self.mean,
            "std": self.std,
            "label_names": [str(labels.get(i, f"LABEL_{i}")) for i in range(self.num_labels)],
        }

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        output["architecture"] = TIMM_PREFIX + self.architecture
        output["model_args"] = dict(self.model_args or {})  # timm calls .get() on it: never null
        output["pretrained_cfg"] = self.timm_pretrained_cfg()
        output["image_processor_type"] = IMAGE_PROCESSOR_TYPE
        return output


__all__ = ["GENERATOR_VERSION", "SUPPORTED_GENERATOR_VERSIONS", "RPGConfig", "check_generator_version"]
