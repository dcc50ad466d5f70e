"""Registration with transformers' Auto classes and timm's model registry (runs on `import rpg_hf`)."""

from __future__ import annotations

from transformers import AutoConfig, AutoModelForImageClassification

from rpg_hf.hf.configuration_rpg import RPGConfig
from rpg_hf.hf.modeling_rpg import RPGForImageClassification
from rpg_hf.timm_models import hub as timm_hub  # noqa: F401  (registers timm's generic `rpg` entrypoint: hf-hub:/local-dir: loading)


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
