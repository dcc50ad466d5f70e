"""Re-parameterize a timm / transformers model so that a ring generates its weights.

* :mod:`.targets` — which weights are generated, in which order, and the DoF split between rings;
* :mod:`.layer` — :class:`RPGGenerator`, the ring holder that serves every generated ``weight``;
* :mod:`.model` — :func:`reparameterize`, :func:`get_generator`, :func:`expand`;
* :mod:`.dof` — the per-layer DoF / compression table.
"""

from rpg_hf.reparam.dof import DofTable, dof_table
from rpg_hf.reparam.layer import RPGGenerator
from rpg_hf.reparam.model import GENERATOR_ATTR, expand, get_generator, reparameterize
from rpg_hf.reparam.targets import GeneratedLayer, head_modules, plan_layers, select_targets

__all__ = ["GENERATOR_ATTR", "DofTable", "GeneratedLayer", "RPGGenerator", "dof_table", "expand", "get_generator",
           "head_modules", "plan_layers", "reparameterize", "select_targets"]
