"""Ring math: unpacking a ring into layer weights, and folding weight gradients back onto it.

Layer ``l`` of a ring of size ``N`` owns the window that starts where the previous layer's ended
(``o_{l+1} = (o_l + n_l) mod N``); its flattened weight is

    W_l[j] = m_l · s_l(j) · ring[(o_l + π_l(j)) mod N]

with π_l and s_l from :mod:`rpg_hf.core.construction`.  Laying all windows end to end gives a virtual
line of length ``T = Σ n_l`` whose position ``t`` reads ``ring[t mod N]``: every ring entry is
used ⌊T/N⌋ or ⌈T/N⌉ times.

Backward never scatters: because π_l is a bijection of the window, the window's gradient is a
*gather* of the weight gradient through π_l⁻¹, and folding the window onto the ring is a sum of
contiguous slices.  Nothing but the ring is kept between steps; index tensors live for one
chunk of one layer.

Every ring-only checkpoint carries this file verbatim as ``reference.py`` (beside ``construction.py``),
and its ``trust_remote_code`` model generates its weights with it (see :mod:`rpg_hf.hf.remote_code`):
so it imports torch, the standard library and ``.construction`` (relatively) only.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import torch

from .construction import (  # relative: see the module docstring
    LayerKeys,
    check_generator_version,
    layer_permutation,
    negative_signs,
)

CHUNK = 1 << 20  # elements per index temporary: bounds the int64 scratch to a few MiB


def to_float32(x: float) -> float:
    """Round a Python float to the nearest float32 value (exactly representable afterwards)."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


@dataclass(frozen=True)
class LayerSlot:
    """One generated tensor's place in its ring.

    ``position`` is the layer's index in the model-wide generated-layer order; it keys π and s,
    so the same layer gets the same permutation whatever the ring scope.  ``version`` is the
    construction (:mod:`.construction`); it defaults to 1, the only one before versions were
    recorded per slot, and every model built by rpg_hf passes its spec's ``generator_version``.
    """

    position: int
    shape: tuple[int, ...]
    start: int  # unwrapped start on the ring's virtual line; the window offset is start mod N
    multiplier: float
    seed: int = 0
    permute: bool = True
    sign_flip: bool = True
    version: int = 1
    keys: LayerKeys = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_generator_version(self.version)
        object.__setattr__(self, "keys", LayerKeys.derive(self.seed, self.position))
        # A float32 multiplier makes ring * m one IEEE float32 product on every device/path.
        object.__setattr__(self, "multiplier", to_float32(self.multiplier))

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def _permutation(slot: LayerSlot, device: torch.device):
    """The slot's π (None when it does not permute)."""
    return layer_permutation(slot.numel, slot.keys, slot.version, device) if slot.permute else None


def _chunks(n: int, device: torch.device):
    for lo in range(0, n, CHUNK):
        yield torch.arange(lo, min(n, lo + CHUNK), dtype=torch.int64, device=device)


def layer_indices(slot: LayerSlot, ring_size: int, device: torch.device | str = "cpu"):
    """Ring index and negation mask of every weight of one layer (tests and reference use)."""
    device = torch.device(device)
    perm = _permutation(slot, device)
    idx, neg = [], []
    for j in _chunks(slot.numel, device):
        p = perm.forward(j) if perm is not None else j
        idx.append((p + slot.start) % ring_size)
        neg.append(negative_signs(j, slot.keys, slot.version) if slot.sign_flip else torch.zeros_like(j, dtype=torch.bool))
    return torch.cat(idx), torch.cat(neg)


def generate_layer(ring: torch.Tensor, slot: LayerSlot, dtype: torch.dtype | None = None) -> torch.Tensor:
    """W_l as a new tensor of ``slot.shape`` (in ``dtype``, default the ring's)."""
    n, size = slot.numel, ring.numel()
    out = torch.empty(n, dtype=ring.dtype, device=ring.device)
    perm = _permutation(slot, ring.device)
    for j in _chunks(n, ring.device):
        p = perm.forward(j) if perm is not None else j
        w = ring[(p + slot.start) % size] * slot.multiplier
        if slot.sign_flip:
            w = torch.where(negative_signs(j, slot.keys, slot.version), -w, w)
        out[j[0] : j[0] + j.numel()] = w
    out = out.view(slot.shape)
    return out if dtype is None or dtype == out.dtype else out.to(dtype)


def window_grad(grad_w: torch.Tensor, slot: LayerSlot) -> torch.Tensor:
    """dL/d(window): the weight gradient gathered through π⁻¹, times m·s (float32)."""
    g = grad_w.reshape(-1).float()
    if not slot.permute and not slot.sign_flip:
        return g * slot.multiplier
    n = slot.numel
    perm = _permutation(slot, g.device)
    out = torch.empty(n, dtype=torch.float32, device=g.device)
    for k in _chunks(n, g.device):
        j = perm.inverse(k) if perm is not None else k
        w = g[j] * slot.multiplier
        if slot.sign_flip:
            w = torch.where(negative_signs(j, slot.keys, slot.version), -w, w)
        out[k[0] : k[0] + k.numel()] = w
    return out


def fold_window(ring_grad: torch.Tensor, window: torch.Tensor, start: int) -> None:
    """Add a window that starts at ``start`` (unwrapped) onto ``ring_grad``, wrapping around.

    Contiguous slice additions only: the head up to the end of the ring, whole turns summed as
    a reshape, then the tail.  No index tensor, no atomics.
    """
    size = ring_grad.numel()
    offset, n = start % size, window.numel()
    head = min(n, size - offset)
    ring_grad[offset : offset + head] += window[:head]
    rest = window[head:]
    turns = rest.numel() // size
    if turns:
        ring_grad += rest[: turns * size].view(turns, size).sum(0)
    tail = rest[turns * size :]
    ring_grad[: tail.numel()] += tail
