"""Registration with transformers' Auto classes and timm's model registry (runs on `import rpg_hf`)."""

from __future__ import annotations

from transformers import AutoConfig, AutoModelForImageClassification

from . import timm_hub  # noqa: F401  (registers timm's generic `rpg` entrypoint: hf-hub:/local-dir: loading)
from .configuration_rpg import RPGConfig
from .modeling_rpg import RPGForImageClassification


def register() -> None:
    """Make `model_type="rpg"` known to AutoConfig / AutoModelForImageClassification (idempotent)."""
    try:
        AutoConfig.register("rpg", RPGConfig)
    except ValueError:  # already registered
        pass
    try:
        AutoModelForImageClassification.register(RPGConfig, RPGForImageClassification)
    except ValueError:
        pass
