"""The two files every ring-only checkpoint carries for ``trust_remote_code=True`` loading.

``configuration_rpg.py`` and ``modeling_rpg.py`` are self-contained (torch + transformers, timm for
timm backbones; relative imports only, never rpg_hf) and are copied verbatim into each saved folder.
The package builds on them — `rpg_hf.RPGConfig` subclasses the config defined here and
`rpg_hf.hf.checkpoint` validates files with the functions defined here — and the tests check the
pinned construction they carry against the package's (golden vectors, bit-identical logits).
"""

from pathlib import Path

REMOTE_CODE_DIR = Path(__file__).resolve().parent
REMOTE_CODE_FILES = ("configuration_rpg.py", "modeling_rpg.py")
