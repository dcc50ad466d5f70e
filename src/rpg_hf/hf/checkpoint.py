"""Reading and writing ring-only safetensors files, with errors that name the problem.

Why read the file ourselves before transformers does: a ring-only checkpoint is small (the ring
plus the free tensors), and checking it up front turns every way it can be wrong — a DoF that
disagrees with the config, a missing ring, NaN/Inf entries, a construction identity
(``backbone.rpg.construction``) that is not config.json's, a truncated or non-safetensors file
— into one clear error instead of a shape-mismatch traceback or silently random weights.
Nothing here ever unpickles.

The readers (and the int8 codec) live in :mod:`rpg_hf.hf.remote_code.rpg_checkpoint`, one of the
files every checkpoint carries for ``trust_remote_code=True``: a load with rpg_hf, without it, and
through timm (``hf-hub:`` / ``local-dir:``) validates with the same code and fails with the same
messages.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from rpg_hf.hf.remote_code import rpg_checkpoint
from rpg_hf.hf.remote_code.rpg_checkpoint import (
    CONSTRUCTION_KEY,
    HUB_KWARGS,
    RING_PREFIX,
    WEIGHTS_NAME,
    CheckpointError,
    check_header,
    check_loading_info,
    read_ring_only,
    resolve_weights,
    ring_key,
)

__all__ = [
    "CONSTRUCTION_KEY",
    "HUB_KWARGS",
    "RING_PREFIX",
    "WEIGHTS_NAME",
    "CheckpointError",
    "check_header",
    "check_loading_info",
    "read_ring_only",
    "resolve_weights",
    "ring_key",
    "ring_only_state_dict",
]


def ring_only_state_dict(model, state: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The tensors a ring-only checkpoint stores: ring(s) (float32 or int8 + scales) and free tensors.

    ``state`` is a state dict to convert (e.g. the one ``Trainer`` hands to ``save_pretrained``);
    default ``model.state_dict()``.  Rings already stored as int8 triples are left as they are.
    """
    return rpg_checkpoint.ring_only_state_dict(model.state_dict() if state is None else state, model.config)
