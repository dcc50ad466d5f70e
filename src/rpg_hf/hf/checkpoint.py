"""Reading and writing ring-only safetensors files, with errors that name the problem.

Why read the file ourselves before transformers does: a ring-only checkpoint is small (the ring
plus the free tensors), and checking it up front turns every way it can be wrong — a DoF that
disagrees with the config, a missing ring, NaN/Inf entries, a truncated or non-safetensors file
— into one clear error instead of a shape-mismatch traceback or silently random weights.
Nothing here ever unpickles.

The readers live in :mod:`rpg_hf.hf.remote_code.modeling_rpg`, the file every checkpoint carries for
``trust_remote_code=True``: a load with rpg_hf, without it, and through timm (``hf-hub:`` /
``local-dir:``) validates with the same code and fails with the same messages.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from rpg_hf.hf.remote_code.modeling_rpg import (
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
    state = dict(model.state_dict() if state is None else state)
    if model.config.ring_dtype == "int8":
        from rpg_hf.compress.quantization import quantize_state_dict

        keys = [ring_key(i) for i in range(len(model.config.ring_sizes))]
        keys = [k for k in keys if k in state and state[k].dtype != torch.int8]
        if keys:
            state = quantize_state_dict(state, block_size=model.config.ring_block_size, ring_keys=keys)
    return state
