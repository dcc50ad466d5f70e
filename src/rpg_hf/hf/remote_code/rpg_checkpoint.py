"""Ring-only safetensors checkpoints: locate, validate, (de)quantize (trust_remote_code file).

rpg_hf copies this file into every ring-only checkpoint it saves, beside ``modeling_rpg.py``; it
imports torch, safetensors and transformers only.  rpg_hf validates with these same functions, so a
load with rpg_hf, without it, and through timm fails with the same messages on a wrong DoF, a
missing or non-finite ring, a truncated or non-safetensors file.  The int8 ring codec is defined here
too, once: :mod:`rpg_hf.compress.quantization` (the package's int8 API, where the pinned scheme is
described) builds on :func:`quantize_ring` / :func:`dequantize`.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import shutil
import struct
from pathlib import Path

import torch

from .configuration_rpg import RPGConfig
from .identity import KEY, config_identity, mismatch

WEIGHTS_NAME = "model.safetensors"
RING_PREFIX = "backbone.rpg.rings."
HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder", "proxies")
SCALE_SUFFIX = ".scale"
BLOCK_SIZE_SUFFIX = ".block_size"
QMAX = 127
# Every trust_remote_code file: what write_remote_code copies into a saved folder.
REMOTE_CODE_FILES = ("configuration_rpg.py", "modeling_rpg.py", "rpg_backbone.py", "rpg_checkpoint.py",
                     "construction.py", "reference.py", "identity.py")
AUTO_MAP = {
    "AutoConfig": "configuration_rpg.RPGConfig",
    "AutoModelForImageClassification": "modeling_rpg.RPGForImageClassification",
}


class CheckpointError(ValueError):
    """A ring-only checkpoint that cannot be loaded as it is."""


def ring_key(i: int) -> str:
    return f"{RING_PREFIX}{i}"


def resolve_weights(path_or_repo, hub_kwargs: dict) -> str:
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


def check_header(path: str) -> dict:
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


def num_blocks(n: int, block_size: int | None) -> int:
    return 1 if block_size is None else max(1, math.ceil(n / block_size))


def expand_scales(scales: torch.Tensor, n: int, block_size: int | None) -> torch.Tensor:
    """Each of the ``n`` entries' scale: one per ring, or one per block of ``block_size``."""
    return scales.expand(n) if block_size is None else scales.repeat_interleave(block_size)[:n]


def quantize_ring(ring: torch.Tensor, block_size: int | None = None) -> dict:
    """Symmetric int8 quantization of a ring: ``{"": values, ".scale": scales, ".block_size": [b]}``."""
    if block_size is not None and (isinstance(block_size, bool) or int(block_size) <= 0):
        raise ValueError(f"block_size must be a positive int or None, got {block_size!r}")
    block_size = None if block_size is None else int(block_size)
    # on the CPU: the int8 file is then the same whichever device trained the ring
    x = ring.detach().reshape(-1).to(device="cpu", dtype=torch.float32)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("cannot quantize a ring holding NaN or inf")
    n = x.numel()
    if block_size is None:
        amax = x.abs().max().reshape(1) if n else torch.zeros(1)
    else:
        blocks = num_blocks(n, block_size)
        padded = torch.zeros(blocks * block_size, dtype=torch.float32)
        padded[:n] = x.abs()
        amax = padded.view(blocks, block_size).amax(dim=1)
    scales = amax / QMAX
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))
    q = torch.round(x / expand_scales(safe, n, block_size)).clamp_(-QMAX, QMAX).to(torch.int8)
    return {"": q.contiguous(), SCALE_SUFFIX: scales.contiguous(),
            BLOCK_SIZE_SUFFIX: torch.tensor([block_size or 0], dtype=torch.int64)}


def dequantize(values: torch.Tensor, scales: torch.Tensor, block_size: int | None) -> torch.Tensor:
    """``float32(values) * scale``: an exact conversion, then one IEEE multiply — the same bits everywhere."""
    return values.to(torch.float32) * expand_scales(scales, values.numel(), block_size)


def int8_entries(tensors, prefix: str) -> tuple[torch.Tensor, torch.Tensor, int | None]:
    """``(values, scales, block_size)`` of the int8 ring stored under ``prefix``, checked."""
    for key in (prefix, prefix + SCALE_SUFFIX, prefix + BLOCK_SIZE_SUFFIX):
        if key not in tensors:
            raise KeyError(f"quantized ring entry {key!r} missing from the checkpoint")
    values, scales = tensors[prefix].reshape(-1), tensors[prefix + SCALE_SUFFIX].reshape(-1)
    block = int(tensors[prefix + BLOCK_SIZE_SUFFIX].reshape(-1)[0])
    if values.dtype != torch.int8 or scales.dtype != torch.float32:
        raise ValueError(f"quantized ring {prefix!r}: expected int8 values and float32 scales, "
                         f"got {values.dtype} / {scales.dtype}")
    if block < 0:
        raise ValueError(f"quantized ring {prefix!r}: block size {block} (0 means one scale per ring)")
    block_size = block or None
    if scales.numel() != num_blocks(values.numel(), block_size):
        raise ValueError(f"{scales.numel()} scales do not fit {values.numel()} entries in blocks of {block_size}")
    return values, scales, block_size


def dequantize_state_dict(tensors) -> dict:
    """Every int8 ring triple (``key``, ``key.scale``, ``key.block_size``) becomes a float32 ring."""
    prefixes = {
        k[: -len(BLOCK_SIZE_SUFFIX)] for k in tensors
        if k.endswith(BLOCK_SIZE_SUFFIX) and tensors.get(k[: -len(BLOCK_SIZE_SUFFIX)]) is not None
        and tensors[k[: -len(BLOCK_SIZE_SUFFIX)]].dtype == torch.int8
    }
    skip = {p + s for p in prefixes for s in (SCALE_SUFFIX, BLOCK_SIZE_SUFFIX)}
    return {key: dequantize(*int8_entries(tensors, key)) if key in prefixes else value
            for key, value in tensors.items() if key not in skip}


CONSTRUCTION_KEY = f"backbone.rpg.{KEY}"  # the construction's identity (identity.py), in files since it existed


def ring_only_state_dict(state, config: RPGConfig) -> dict:
    """The tensors a ring-only checkpoint stores: ring(s) (float32, or int8 triples for
    ``ring_dtype="int8"``), free tensors and the construction's identity (72 bytes: a Trainer resuming
    from the file reads it without config.json).  Rings already stored as int8 triples stay as they are."""
    rings = {ring_key(i) for i in range(len(config.ring_sizes or [config.dof]))} if config.ring_dtype == "int8" else ()
    out = {}
    for key, value in state.items():
        if key in rings and value.dtype != torch.int8:
            out.update({key + suffix: t for suffix, t in quantize_ring(value, config.ring_block_size).items()})
        else:
            out[key] = value
    return out


def read_ring_only(path: str, config: RPGConfig) -> dict:
    """All tensors of a ring-only file, validated against the config; int8 rings dequantized."""
    from safetensors import SafetensorError, safe_open

    check_header(path)
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
    stored = tensors.get(CONSTRUCTION_KEY)  # absent from files written before it existed
    if stored is not None and config.generated_layers and config.ring_sizes:
        problem = mismatch(stored, torch.tensor(config_identity(config), dtype=torch.int64))
        if problem:
            raise CheckpointError(f"{path} does not belong to its config.json: {problem}")
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


def remote_code_sources() -> dict[str, Path]:
    """Each trust_remote_code file and the source it is copied from: the file of the module this code
    imported under that name (a sibling in a checkpoint; ``rpg_hf/core/*.py`` for ``construction.py``
    and ``reference.py`` inside rpg_hf, see :mod:`rpg_hf.hf.remote_code`)."""
    return {name: Path(importlib.import_module(f".{name[:-3]}", __package__).__file__).resolve()
            for name in REMOTE_CODE_FILES}


def write_remote_code(save_directory) -> list[str]:
    """Copy every trust_remote_code file (:data:`REMOTE_CODE_FILES`) into ``save_directory``; returns
    the paths written."""
    written = []
    for name, src in remote_code_sources().items():
        dst = Path(save_directory) / name
        if not (dst.exists() and dst.resolve() == src):
            shutil.copyfile(src, dst)
        written.append(str(dst))
    return written
