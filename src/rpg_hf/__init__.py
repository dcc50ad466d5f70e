"""rpg_hf: Recurrent Parameter Generators for timm and Hugging Face models.

``import rpg_hf`` registers ``model_type="rpg"`` with transformers' Auto classes and the
``rpg_*`` architectures with timm.
"""

from rpg_hf import timm_models  # noqa: F401  (registers rpg_* with timm)
from rpg_hf.compress.fold import FoldReport, fold, fold_into
from rpg_hf.core.construction import GENERATOR_VERSION
from rpg_hf.hf.auto import register as _register
from rpg_hf.hf.configuration_rpg import RPGConfig
from rpg_hf.hf.modeling_rpg import RPGForImageClassification, RPGPreTrainedModel, save_expanded
from rpg_hf.reparam import (
    DofTable,
    GeneratedLayer,
    RPGGenerator,
    dof_table,
    expand,
    get_generator,
    reparameterize,
)
from rpg_hf.spec import RPGSpec

__version__ = "0.1.0"
_register()

__all__ = [
    "GENERATOR_VERSION",
    "DofTable",
    "FoldReport",
    "GeneratedLayer",
    "RPGConfig",
    "RPGForImageClassification",
    "RPGGenerator",
    "RPGPreTrainedModel",
    "RPGSpec",
    "dof_table",
    "expand",
    "fold",
    "fold_into",
    "get_generator",
    "reparameterize",
    "save_expanded",
]
