"""`RPGConfig`: everything needed to rebuild a ring-only checkpoint's model exactly.

A ring-only checkpoint is ``config.json`` + ``model.safetensors`` holding the ring(s) and the free
tensors.  The config carries the backbone (a timm architecture with its ``model_args``, or a full
``ViTConfig``), the seed, the DoF, the generator version and — once a model was built — the
recorded generated-layer order and ring sizes, so that loading never re-derives the selection
from module names (HF ViT's names changed between transformers v4 and v5, DESIGN.md §4).

The fields and their JSON form are defined once, in :mod:`rpg_hf.hf.remote_code.configuration_rpg`
(the file every checkpoint carries for ``trust_remote_code=True``); this class adds the package's
`RPGSpec` validation on top, so the package and the remote code cannot disagree on the format.
"""

from __future__ import annotations

from rpg_hf.core.construction import check_generator_version
from rpg_hf.hf.remote_code.configuration_rpg import BACKBONES, IMAGENET_MEAN, IMAGENET_STD, TIMM_PREFIX
from rpg_hf.hf.remote_code.configuration_rpg import RPGConfig as _RPGConfigFields
from rpg_hf.spec import DEFAULT_TARGET_TYPES, RPGSpec


class RPGConfig(_RPGConfigFields):
    __doc__ = _RPGConfigFields.__doc__

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        check_generator_version(self.generator_version)
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


__all__ = ["BACKBONES", "IMAGENET_MEAN", "IMAGENET_STD", "TIMM_PREFIX", "RPGConfig"]
