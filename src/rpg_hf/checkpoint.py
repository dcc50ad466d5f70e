"""Reading and writing ring-only safetensors files, with errors that name the problem.

Why read the file ourselves before transformers does: a ring-only checkpoint is small (the ring
plus the free tensors), and checking it up front turns every way it can be wrong — a DoF that
disagrees with the config, a missing ring, NaN/Inf entries, a truncated or non-safetensors file
— into one clear error instead of a shape-mismatch traceback or silently random weights.
Nothing here ever unpickles.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from .configuration_rpg import RPGConfig

WEIGHTS_NAME = "model.safetensors"
RING_PREFIX = "backbone.rpg.rings."
HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder", "proxies")


class CheckpointError(ValueError):
    """A ring-only checkpoint that cannot be loaded as it is."""


def ring_key(i: int) -> str:
    return f"{RING_PREFIX}{i}"


def ring_only_state_dict(model) -> dict[str, torch.Tensor]:
    """The tensors a ring-only checkpoint stores: ring(s) (float32 or int8 + scales) and free tensors."""
    state = model.state_dict()
    if model.config.ring_dtype == "int8":
        from .quantization import quantize_state_dict

        keys = [ring_key(i) for i in range(len(model.config.ring_sizes))]
        state = quantize_state_dict(state, block_size=model.config.ring_block_size, ring_keys=keys)
    return state


def resolve_weights(path_or_repo: str | os.PathLike, hub_kwargs: dict) -> str:
    """Local path of ``model.safetensors`` in a directory or a (cached) Hub repo."""
    from transformers.utils import cached_file

    local = Path(path_or_repo) / hub_kwargs.get("subfolder", "") / WEIGHTS_NAME
    if local.is_file():
        return str(local)
    found = cached_file(path_or_repo, WEIGHTS_NAME, _raise_exceptions_for_missing_entries=False, **hub_kwargs)
    if found is None:
        raise CheckpointError(
            f"no {WEIGHTS_NAME} in {path_or_repo!s}: rpg_hf checkpoints are ring-only safetensors "
            "(pytorch_model.bin and other pickle formats are never loaded)"
        )
    return found


def _check_header(path: str) -> dict:
    """Parse the safetensors header and check the file holds every byte it promises."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise CheckpointError(f"{path} is not a safetensors file (only {size} bytes)")
        (header_len,) = struct.unpack("<Q", raw)
        if header_len > size - 8 or header_len > 100 * 2**20:
            raise CheckpointError(f"{path} is not a safetensors file (or is truncated): header length {header_len}")
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CheckpointError(f"{path} is not a safetensors file: unreadable header ({err})") from err
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + header_len + end > size:
        raise CheckpointError(
            f"{path} is truncated: the header promises {8 + header_len + end} bytes, the file has {size}"
        )
    return header


def read_ring_only(path: str, config: RPGConfig) -> dict[str, torch.Tensor]:
    """All tensors of a ring-only file, validated against the config; int8 rings dequantized."""
    _check_header(path)
    try:
        with safe_open(path, framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except SafetensorError as err:
        raise CheckpointError(f"{path} is not a valid safetensors file: {err}") from err
    sizes = config.ring_sizes or [config.dof]
    for i in range(len(sizes)):
        if ring_key(i) not in tensors:
            raise CheckpointError(
                f"{path} has no ring tensor {ring_key(i)!r}: not a ring-only RPG checkpoint, or damaged"
            )
    if config.ring_dtype == "int8":
        from .quantization import dequantize_state_dict

        try:
            tensors = dequantize_state_dict(tensors)
        except (KeyError, ValueError) as err:
            raise CheckpointError(f"int8 ring in {path} cannot be read: {err}") from err
    for i, expected in enumerate(sizes):
        key = ring_key(i)
        ring = tensors[key]
        if ring.ndim != 1 or ring.numel() != expected:
            raise CheckpointError(
                f"ring {key!r} in {path} has {ring.numel()} entries, but the config says "
                f"{'dof' if len(sizes) == 1 else f'ring_sizes[{i}]'}={expected}"
            )
        if not torch.isfinite(ring).all():
            bad = int((~torch.isfinite(ring)).sum())
            raise CheckpointError(f"ring {key!r} in {path} holds {bad} NaN/Inf value(s)")
    extra = [k for k in tensors if k.startswith(RING_PREFIX) and k not in {ring_key(i) for i in range(len(sizes))}]
    if extra:
        raise CheckpointError(f"{path} holds ring tensors {extra} beyond the config's {len(sizes)} ring(s)")
    return tensors


def check_loading_info(info: dict, path: str) -> None:
    """Turn transformers' missing/unexpected keys into an architecture-mismatch error."""
    missing, unexpected = sorted(info.get("missing_keys", ())), sorted(info.get("unexpected_keys", ()))
    mismatched = info.get("mismatched_keys", ())
    if missing or unexpected or mismatched:
        raise CheckpointError(
            f"architecture mismatch: {path} does not match the architecture in its config: missing {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
            f"{'...' if len(unexpected) > 5 else ''}, mismatched {list(mismatched)[:5]}"
        )
