"""`RPGConfig`: everything needed to rebuild a ring-only checkpoint's model exactly.

A ring-only checkpoint is ``config.json`` + ``model.safetensors`` holding the ring(s) and the free
tensors.  The config carries the backbone (a timm architecture with its ``model_args``, or a full
``ViTConfig``), the seed, the DoF, the generator version and — once a model was built — the
recorded generated-layer order and ring sizes, so that loading never re-derives the selection
from module names (HF ViT's names changed between transformers v4 and v5).

The fields and their JSON form are defined once, in :mod:`rpg_hf.hf.remote_code.configuration_rpg`
(the file every checkpoint carries for ``trust_remote_code=True``, so it has to repeat the names and
defaults of the `RPGSpec` fields; the tests fail if the two ever disagree).  This class
adds the package's `RPGSpec` validation on top: :attr:`RPGConfig.spec` is built from whichever
`RPGSpec` fields the config holds, ``None`` (e.g. ``target_types``) meaning the spec's default.
"""

from __future__ import annotations

from rpg_hf.hf.remote_code.configuration_rpg import BACKBONES, IMAGENET_MEAN, IMAGENET_STD, TIMM_PREFIX
from rpg_hf.hf.remote_code.configuration_rpg import RPGConfig as _RPGConfigFields
from rpg_hf.spec import RPGSpec, spec_kwargs


class RPGConfig(_RPGConfigFields):
    __doc__ = _RPGConfigFields.__doc__

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.spec  # validates dof, seed, regexes ...  # noqa: B018

    @property
    def spec(self) -> RPGSpec:
        """The `RPGSpec` these fields describe (a field left ``None`` takes the spec's default)."""
        return RPGSpec(**spec_kwargs(self))


__all__ = ["BACKBONES", "IMAGENET_MEAN", "IMAGENET_STD", "TIMM_PREFIX", "RPGConfig"]
