"""timm glue: ``rpg_*`` and ``cifar_resnet*`` entrypoints registered with timm (:mod:`.registry`)
and ring-only checkpoints through timm's ``hf-hub:`` / ``local-dir:`` loading (:mod:`.hub`)."""

from rpg_hf.timm_models.registry import RPG_ARCHITECTURES, build_rpg_model, create_rpg_model, rpg_default_cfg

__all__ = ["RPG_ARCHITECTURES", "build_rpg_model", "create_rpg_model", "rpg_default_cfg"]
