"""rpg_hf: Recurrent Parameter Generators for timm and Hugging Face models.

``import rpg_hf`` registers ``model_type="rpg"`` with transformers' Auto classes and the
``rpg_*`` architectures with timm.
"""

from . import timm_models  # noqa: F401  (registers rpg_* with timm)
from .auto import register as _register
from .configuration_rpg import RPGConfig
from .dof import DofTable, dof_table
from .fold import FoldReport, fold, fold_into
from .generator import GENERATOR_VERSION
from .modeling_rpg import RPGForImageClassification, RPGPreTrainedModel, save_expanded
from .reparam import GeneratedLayer, RPGGenerator, expand, get_generator, reparameterize
from .spec import RPGSpec

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
