"""The files every ring-only checkpoint carries for ``trust_remote_code=True`` loading.

``configuration_rpg.py`` and ``modeling_rpg.py`` (the ``auto_map`` entries) and the files they import
relatively are self-contained: torch + transformers + safetensors, timm for timm backbones, never
rpg_hf.  transformers' dynamic-module loader fetches a file's relative imports with it, and
:func:`~.rpg_checkpoint.write_remote_code` copies all of them (:data:`REMOTE_CODE_FILES`) into each
saved folder.

One source for each piece of logic, whether rpg_hf is installed or not:

* four files live in this folder: the config, the `PreTrainedModel` classes, the checkpoint readers
  (with the int8 codec) and the plain backbone + ring module;
* three are the package's own pure-torch modules, shipped verbatim under their own names:
  :mod:`rpg_hf.core.construction` as ``construction.py`` (the pinned construction),
  :mod:`rpg_hf.core.reference` as ``reference.py`` (generation in plain PyTorch; it imports
  ``.construction`` relatively, so it runs beside it in a checkpoint as in ``rpg_hf.core``) and
  :mod:`rpg_hf.reparam.identity` as ``identity.py`` (the construction's identity every state dict
  carries, and the ring holders' check of it).

The files here import those three as siblings (``from .reference import ...``).  In a checkpoint they
are siblings; inside the package the two names are aliases, set below in ``sys.modules`` before any
file here is imported: ``rpg_hf.hf.remote_code.construction`` *is* the module object
``rpg_hf.core.construction`` (not a copy).  ``write_remote_code`` copies the source file of each
module the running code actually imported, so from the package it ships ``rpg_hf/core/*.py``, and
from a checkpoint loaded without rpg_hf it ships that checkpoint's own siblings.

The package builds on these files: `rpg_hf.RPGConfig` and the ``RPG*`` models subclass the classes
defined here, and :mod:`rpg_hf.hf.checkpoint` / :mod:`rpg_hf.compress.quantization` read, validate and
(de)quantize with the functions defined here.
"""

import sys

from rpg_hf.core import construction, reference
from rpg_hf.reparam import identity

for _module in (construction, reference, identity):  # the shipped package modules, under their sibling names
    sys.modules[f"{__name__}.{_module.__name__.rpartition('.')[2]}"] = _module

from .rpg_checkpoint import REMOTE_CODE_FILES, remote_code_sources  # noqa: E402  (after the aliases)

__all__ = ["REMOTE_CODE_FILES", "remote_code_sources"]
