"""Symmetric int8 storage of RPG rings, and before/after accuracy checks for ring edits.

Why: in a ring-only checkpoint the ring is (nearly) the whole file — free parameters are the
stem, norms, biases and the head — so storing it as int8 makes the checkpoint ~4x smaller at the
cost of one rounding per ring entry.  Because every generated weight is ``m · s · ring[i]``, the
generated model sees exactly the same rounding (scaled by its fixed multiplier): quantizing the
ring *is* quantizing every generated weight, with no per-layer calibration.

What is pinned (so an int8 checkpoint expands identically everywhere):

* quantization: per block of ``block_size`` consecutive ring entries (the whole ring when
  ``block_size`` is None) ``scale = max|x| / 127`` in float32, ``q = clamp(round_half_even(x /
  scale), -127, 127)`` as int8; an all-zero block gets ``scale = 0`` and ``q = 0`` (zero-safe,
  no division by zero).  The level -128 is never used, so the code is symmetric.
* dequantization: ``float32(q) * scale`` — an exact int8→float32 conversion followed by one IEEE
  float32 multiplication, which is correctly rounded on every CPU and GPU, so the dequantized
  ring is bit-identical on every run and device.  The elementwise error is at most ``scale / 2``
  (plus float32 rounding of the quotient, ~1e-7 relative).

Safetensors layout written by :meth:`QuantizedRing.to_tensors` for a ring stored under
``<prefix>`` (e.g. ``rpg.rings.0``)::

    <prefix>             int8    [N]            the quantized ring entries
    <prefix>.scale       float32 [num_blocks]   one scale per block (1 for a per-ring scale)
    <prefix>.block_size  int64   [1]            block size; 0 means one scale for the whole ring

The block size is a tensor (not file metadata) so the three entries are self-describing and
survive any state-dict plumbing.  :func:`quantize_state_dict` / :func:`dequantize_state_dict`
apply this to every ring of a state dict; a loader recognises a quantized ring by the presence of
``<prefix>.block_size`` next to an int8 ``<prefix>``.

The codec itself — quantizing, dequantizing, reading the three entries — is written once, in
:mod:`rpg_hf.hf.remote_code.rpg_checkpoint`, the file every checkpoint carries so that a load without
rpg_hf dequantizes with the same code; this module wraps it in the package's API.

:func:`evaluate_accuracy` and :func:`compare_before_after` report the accuracy cost of such an
edit (int8 rings here, ring/channel pruning in :mod:`rpg_hf.compress.pruning`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rpg_hf.hf.remote_code import rpg_checkpoint as codec
from rpg_hf.hf.remote_code.rpg_checkpoint import (  # the codec's constants and state-dict reader, re-exported
    BLOCK_SIZE_SUFFIX,
    QMAX,  # noqa: F401
    SCALE_SUFFIX,
    dequantize_state_dict,
)
from rpg_hf.reparam import get_generator
from rpg_hf.reparam.model import is_ring_key

__all__ = [
    "QUANT_SCHEME",
    "QuantizedRing",
    "compare_before_after",
    "dequantize_ring",
    "dequantize_state_dict",
    "evaluate_accuracy",
    "is_quantized_state_dict",
    "quantize_model_rings",
    "quantize_ring",
    "quantize_state_dict",
]

QUANT_SCHEME = "symmetric-int8-v1"  # name of the scheme above; record it in a checkpoint's config


# --------------------------------------------------------------------------- quantized ring


@dataclass(frozen=True)
class QuantizedRing:
    """A ring stored as int8 values and float32 scales (see the module docstring for the scheme)."""

    values: torch.Tensor  # int8 [N]
    scales: torch.Tensor  # float32 [num_blocks]
    block_size: int | None = None  # None: one scale for the whole ring

    def __post_init__(self) -> None:
        if self.values.dtype != torch.int8 or self.values.ndim != 1:
            raise ValueError(f"quantized ring values must be a 1-D int8 tensor, got {self.values.dtype} "
                             f"{tuple(self.values.shape)}")
        if self.scales.dtype != torch.float32 or self.scales.ndim != 1:
            raise ValueError(f"quantized ring scales must be a 1-D float32 tensor, got {self.scales.dtype} "
                             f"{tuple(self.scales.shape)}")
        if self.block_size is not None and self.block_size <= 0:
            raise ValueError(f"block_size must be positive or None, got {self.block_size}")
        if self.scales.numel() != codec.num_blocks(self.values.numel(), self.block_size):
            raise ValueError(
                f"{self.scales.numel()} scales do not fit {self.values.numel()} entries in blocks of "
                f"{self.block_size}"
            )

    @property
    def numel(self) -> int:
        return self.values.numel()

    @property
    def num_blocks(self) -> int:
        return self.scales.numel()

    @property
    def nbytes(self) -> int:
        """Bytes of tensor data (int8 values + float32 scales), without any file header."""
        return self.values.numel() + 4 * self.scales.numel()

    def dequantize(self) -> torch.Tensor:
        return dequantize_ring(self)

    def max_error(self) -> torch.Tensor:
        """Per-entry bound on |x - dequantize(quantize(x))|: half the entry's block scale."""
        return codec.expand_scales(self.scales, self.numel, self.block_size) / 2

    def to(self, device: torch.device | str) -> QuantizedRing:
        return QuantizedRing(self.values.to(device), self.scales.to(device), self.block_size)

    def to_tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        """Safetensors entries ``<prefix>``, ``<prefix>.scale``, ``<prefix>.block_size`` (contiguous)."""
        return {
            prefix: self.values.contiguous(),
            prefix + SCALE_SUFFIX: self.scales.contiguous(),
            prefix + BLOCK_SIZE_SUFFIX: torch.tensor([self.block_size or 0], dtype=torch.int64),
        }

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor], prefix: str) -> QuantizedRing:
        """Inverse of :meth:`to_tensors`; raises KeyError naming the missing entry."""
        return cls(*codec.int8_entries(tensors, prefix))


def quantize_ring(ring: torch.Tensor, *, block_size: int | None = None) -> QuantizedRing:
    """Symmetric int8 quantization of a (flattened) ring; per-ring or per-block float32 scales."""
    return QuantizedRing.from_tensors(codec.quantize_ring(ring, block_size), "")


def dequantize_ring(q: QuantizedRing) -> torch.Tensor:
    """float32(values) * scale: exact conversion then one IEEE multiply — identical everywhere.

    Runs on the device the QuantizedRing's tensors are on (``q.to(device)`` first to dequantize
    on a GPU); the result is the same bit pattern on any device.
    """
    return codec.dequantize(q.values, q.scales, q.block_size)


def quantize_model_rings(model: nn.Module, block_size: int | None = None) -> list[QuantizedRing]:
    """Replace every ring's values in place by their int8 round trip; returns the QuantizedRings.

    Afterwards the model computes exactly what a model loaded from the int8 checkpoint computes.
    """
    gen = get_generator(model)
    out = []
    with torch.no_grad():
        for ring in gen.rings:
            q = quantize_ring(ring, block_size=block_size)
            ring.copy_(dequantize_ring(q).to(device=ring.device, dtype=ring.dtype).view_as(ring))
            out.append(q)
    return out


# --------------------------------------------------------------------------- state dicts


def quantize_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    *,
    block_size: int | None = None,
    ring_keys: Iterable[str] | None = None,
) -> dict[str, torch.Tensor]:
    """A copy of ``state_dict`` whose ring entries are replaced by their int8 triples.

    ``ring_keys`` defaults to every key matching ``(...)rpg.rings.<i>``.  Other tensors are kept as
    they are (free parameters stay float).
    """
    keys = set(ring_keys) if ring_keys is not None else {k for k in state_dict if is_ring_key(k)}
    missing = keys - set(state_dict)
    if missing:
        raise KeyError(f"ring key(s) not in the state dict: {sorted(missing)}")
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key in keys:
            out.update(quantize_ring(value, block_size=block_size).to_tensors(key))
        else:
            out[key] = value
    return out


def is_quantized_state_dict(tensors: Mapping[str, torch.Tensor]) -> bool:
    return any(k.endswith(BLOCK_SIZE_SUFFIX) and k[: -len(BLOCK_SIZE_SUFFIX)] in tensors for k in tensors)


# --------------------------------------------------------------------------- accuracy


def _split_batch(batch: Any) -> tuple[Any, torch.Tensor]:
    if isinstance(batch, Mapping):
        x = batch.get("pixel_values", batch.get("image", batch.get("x")))
        y = batch.get("labels", batch.get("label", batch.get("y")))
        if x is None or y is None:
            raise ValueError(f"cannot find inputs/labels in a batch with keys {sorted(batch)}")
        return x, y
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise ValueError(f"a batch must be (inputs, labels) or a dict with pixel_values/labels, got {type(batch)}")


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, loader: Iterable[Any]) -> float:
    """Top-1 accuracy in percent of ``model`` (put in eval mode, then restored) over ``loader``.

    Batches are ``(inputs, labels)`` or dicts with ``pixel_values``/``labels``; the model output
    may be logits or an object with ``.logits`` (transformers).
    """
    was_training = model.training
    model.eval()
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    correct = total = 0
    try:
        for batch in loader:
            x, y = _split_batch(batch)
            out = model(x.to(device))
            logits = out.logits if hasattr(out, "logits") else out
            y = torch.as_tensor(y).to(logits.device).reshape(-1)
            correct += int((logits.argmax(dim=-1) == y).sum())
            total += y.numel()
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError("evaluate_accuracy: the loader yielded no samples")
    return 100.0 * correct / total


def compare_before_after(
    model: nn.Module, loader: Iterable[Any], transform_fn: Callable[[nn.Module], Any]
) -> dict[str, Any]:
    """Accuracy before and after ``transform_fn(model)`` (int8 rings, ring or channel pruning).

    The transformation may edit ``model`` in place or return a new model; when it returns an
    ``nn.Module`` that one is evaluated.  Returns ``{"accuracy_before", "accuracy_after",
    "drop"}`` (percent, percentage points; ``drop = before - after``) and ``"result"``, whatever
    ``transform_fn`` returned (QuantizedRings, a RingMask, a channel-pruning report ...).
    """
    before = evaluate_accuracy(model, loader)
    result = transform_fn(model)
    target = result if isinstance(result, nn.Module) else model
    after = evaluate_accuracy(target, loader)
    return {"accuracy_before": before, "accuracy_after": after, "drop": before - after, "result": result}
