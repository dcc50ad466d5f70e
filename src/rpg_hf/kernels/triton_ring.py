"""Triton kernels: one launch generates every layer of a ring, one launch folds the gradient back.

Both kernels recompute indices and signs from the packed layer table of a
:class:`~rpg_hf.kernels.plan.RingPlan` (uint32 arithmetic, hash32 evaluated inline; no stored
index or round tables), following ``GENERATOR_VERSION = 1`` of :mod:`rpg_hf.generator` bit for bit.

* forward: the flat output (all layers end to end, in the ring's dtype or directly in the
  requested one, e.g. the autocast dtype) is cut into blocks of ``BLOCK`` elements; a program finds
  its layer from the per-layer block starts, computes ``p = π(j)`` (four Feistel rounds, then cycle
  walking while any lane is outside ``[0, n)``), reads ``ring[(o + p) mod N]`` and writes
  ``s(j) · m · ring[...]``.
* backward: program ``(rb, s)`` owns ring entries ``[rb·RB, (rb+1)·RB)``; for every layer and every
  turn ``i ≡ s (mod S)`` of the layer's window around the ring it gathers the weight gradient at
  ``j = π⁻¹(k)``, ``k = i·N + r − o``, times ``m · s(j)``, and sums in registers.  Every ring entry
  is written by exactly one program per split ``s`` — no atomics, deterministic — and the ``S``
  partial rows are summed afterwards (``S = 1`` when the ring alone fills the GPU).

The weight gradients are read in place through a small table of their addresses (one per layer),
so nothing is concatenated.

Requirements: each layer has fewer than ``MAX_N`` elements and the ring fewer than 2**31 entries
(checked by :func:`supports`); otherwise the caller uses the reference path.
"""

from __future__ import annotations

import os

import torch

try:  # triton is optional: CPU-only installs use the C or the reference path
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except Exception:  # noqa: BLE001
    triton = None
    tl = None
    HAVE_TRITON = False

from .plan import META_WIDTH, RingPlan

MAX_N = 2**32 - 2**18  # keeps x * b + y < 2**32 in uint32 (a * b < n + b)
FWD_BLOCK = 1024
BWD_BLOCK = 256
_TORCH_TO_TL = {}


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def supports(ring: torch.Tensor, plan: RingPlan) -> bool:
    if not HAVE_TRITON:
        return False
    if not (ring.is_cuda or (interpreting() and ring.device.type == "cpu")):
        return False
    if ring.dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        return False
    return plan.ring_size < 2**31 and max(plan.numels, default=0) < MAX_N


if HAVE_TRITON:
    _TORCH_TO_TL = {
        torch.float32: tl.float32,
        torch.float64: tl.float64,
        torch.float16: tl.float16,
        torch.bfloat16: tl.bfloat16,
    }

    @triton.jit
    def _hash32(v, k):
        """hash32 of the spec on uint32 lanes (wrapping multiplies == the int64 & MASK32 reference)."""
        v = v ^ k
        v = v ^ (v >> 15)
        v = v * 0x2C1B3C6D
        v = v ^ (v >> 12)
        v = v * 0x297A2D39
        v = v ^ (v >> 15)
        return v

    @triton.jit
    def _rounds_fwd(x, y, a, b, k0, k1, k2, k3):
        x = x + _hash32(y, k0) % a
        x = tl.where(x >= a, x - a, x)
        y = y + _hash32(x, k1) % b
        y = tl.where(y >= b, y - b, y)
        x = x + _hash32(y, k2) % a
        x = tl.where(x >= a, x - a, x)
        y = y + _hash32(x, k3) % b
        y = tl.where(y >= b, y - b, y)
        return x, y

    @triton.jit
    def _rounds_inv(x, y, a, b, k0, k1, k2, k3):
        t = _hash32(x, k3) % b
        y = tl.where(y >= t, y - t, y + b - t)
        t = _hash32(y, k2) % a
        x = tl.where(x >= t, x - t, x + a - t)
        t = _hash32(x, k1) % b
        y = tl.where(y >= t, y - t, y + b - t)
        t = _hash32(y, k0) % a
        x = tl.where(x >= t, x - t, x + a - t)
        return x, y

    @triton.jit
    def _permute(j, valid, n, a, b, k0, k1, k2, k3, INVERSE: tl.constexpr):
        """π(j) (or π⁻¹(j)) for uint32 lanes ``j`` in [0, n); lanes not ``valid`` are left alone."""
        x = j // b
        y = j - x * b
        if INVERSE:
            x, y = _rounds_inv(x, y, a, b, k0, k1, k2, k3)
        else:
            x, y = _rounds_fwd(x, y, a, b, k0, k1, k2, k3)
        p = x * b + y
        outside = valid & (p >= n)
        # cycle walking: few lanes (< 1/a of them) leave [0, n); re-apply the rounds to those
        while tl.max(outside.to(tl.int32), axis=0) > 0:
            x = p // b
            y = p - x * b
            if INVERSE:
                x, y = _rounds_inv(x, y, a, b, k0, k1, k2, k3)
            else:
                x, y = _rounds_fwd(x, y, a, b, k0, k1, k2, k3)
            p = tl.where(outside, x * b + y, p)
            outside = valid & (p >= n)
        return p

    @triton.jit
    def _load_layer(meta_ptr, l, W: tl.constexpr):
        row = meta_ptr + l * W
        n = tl.load(row + 0).to(tl.uint32)
        a = tl.load(row + 1).to(tl.uint32)
        b = tl.load(row + 2).to(tl.uint32)
        o = tl.load(row + 3).to(tl.uint32)
        flags = tl.load(row + 4)
        k0 = tl.load(row + 5).to(tl.uint32)
        k1 = tl.load(row + 6).to(tl.uint32)
        k2 = tl.load(row + 7).to(tl.uint32)
        k3 = tl.load(row + 8).to(tl.uint32)
        ks = tl.load(row + 9).to(tl.uint32)
        return n, a, b, o, flags, k0, k1, k2, k3, ks

    @triton.jit(do_not_specialize=["N", "L"])
    def _forward_kernel(
        ring_ptr, out_ptr, meta_ptr, mult_ptr, blk_ptr, off_ptr, N, L,
        W: tl.constexpr, LPAD: tl.constexpr, BLOCK: tl.constexpr,
        COMPUTE: tl.constexpr, RING_DT: tl.constexpr, OUT_DT: tl.constexpr,
    ):
        pid = tl.program_id(0)
        li = tl.arange(0, LPAD)
        starts = tl.load(blk_ptr + li, mask=li < L, other=2**31 - 1)
        l = tl.sum((starts <= pid).to(tl.int32), axis=0) - 1  # the layer this block belongs to
        blk = pid - tl.load(blk_ptr + l)
        n, a, b, o, flags, k0, k1, k2, k3, ks = _load_layer(meta_ptr, l, W)
        m = tl.load(mult_ptr + l).to(COMPUTE)
        j = (blk * BLOCK + tl.arange(0, BLOCK)).to(tl.uint32)
        valid = j < n
        if (flags & 1) != 0:
            p = _permute(j, valid, n, a, b, k0, k1, k2, k3, False)
        else:
            p = j
        nu = N.to(tl.uint32)
        idx = o + p % nu
        idx = tl.where(idx >= nu, idx - nu, idx)
        r = tl.load(ring_ptr + idx, mask=valid, other=0.0)
        v = (r.to(COMPUTE) * m).to(RING_DT).to(OUT_DT)
        neg = ((_hash32(j, ks) >> 31) != 0) & ((flags & 2) != 0)
        v = tl.where(neg, -v, v)
        base = tl.load(off_ptr + l)  # int64 offset of the layer in the flat output
        tl.store(out_ptr + base + j.to(tl.int64), v, mask=valid)

    @triton.jit(do_not_specialize=["N", "L", "S"])
    def _backward_kernel(
        gaddr_ptr, part_ptr, meta_ptr, mult_ptr, N, L, S,
        W: tl.constexpr, RB: tl.constexpr, G_DT: tl.constexpr,
    ):
        rb = tl.program_id(0)
        s = tl.program_id(1)
        r = rb * RB + tl.arange(0, RB)
        rvalid = r < N
        acc = tl.zeros([RB], dtype=tl.float32)
        for l in range(L):
            addr = tl.load(gaddr_ptr + l)
            if addr != 0:  # 0: this layer got no gradient
                g_ptr = addr.to(tl.pointer_type(G_DT))
                n, a, b, o, flags, k0, k1, k2, k3, ks = _load_layer(meta_ptr, l, W)
                m = tl.load(mult_ptr + l)
                n64 = n.to(tl.int64)
                turns = ((o.to(tl.int64) + n64 + N - 1) // N).to(tl.int32)
                for i in range(s, turns, S):
                    k = i.to(tl.int64) * N + r.to(tl.int64) - o.to(tl.int64)
                    valid = rvalid & (k >= 0) & (k < n64)
                    ku = tl.where(valid, k, 0).to(tl.uint32)
                    if (flags & 1) != 0:
                        jj = _permute(ku, valid, n, a, b, k0, k1, k2, k3, True)
                    else:
                        jj = ku
                    g = tl.load(g_ptr + jj.to(tl.int64), mask=valid, other=0.0).to(tl.float32)
                    v = g * m
                    neg = ((_hash32(jj, ks) >> 31) != 0) & ((flags & 2) != 0)
                    v = tl.where(neg, -v, v)
                    acc += tl.where(valid, v, 0.0)
        tl.store(part_ptr + s.to(tl.int64) * N + r, acc, mask=rvalid)


def _next_pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def _tables(plan: RingPlan, device: torch.device):
    meta = plan.cached("meta", device, lambda: plan.meta)
    blocks = [(n + FWD_BLOCK - 1) // FWD_BLOCK for n in plan.numels]
    starts = [0]
    for nb in blocks:
        starts.append(starts[-1] + nb)
    blk = plan.cached("fwd_blocks", device, lambda: torch.tensor(starts, dtype=torch.int32))
    off = plan.cached("offsets", device, lambda: torch.tensor(plan.offsets, dtype=torch.int64))
    return meta, blk, off, starts[-1]


def forward_flat(ring: torch.Tensor, plan: RingPlan, dtype: torch.dtype | None = None) -> torch.Tensor:
    """All layers of ``plan`` end to end in one new flat tensor (``dtype``, default the ring's)."""
    ring = ring.detach().contiguous()
    out_dtype = dtype or ring.dtype
    out = torch.empty(plan.total, dtype=out_dtype, device=ring.device)
    if plan.total == 0:
        return out
    compute = torch.float64 if ring.dtype == torch.float64 else torch.float32
    meta, blk, off, nblocks = _tables(plan, ring.device)
    mult = plan.mult(compute, ring.device)
    _forward_kernel[(nblocks,)](
        ring, out, meta, mult, blk, off, plan.ring_size, plan.num_layers,
        W=META_WIDTH, LPAD=max(2, _next_pow2(plan.num_layers + 1)), BLOCK=FWD_BLOCK,
        COMPUTE=_TORCH_TO_TL[compute], RING_DT=_TORCH_TO_TL[ring.dtype], OUT_DT=_TORCH_TO_TL[out_dtype],
    )
    return out


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def backward(grads, plan: RingPlan, ring_dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """dL/dring (in ``ring_dtype``) from per-layer weight gradients (None: no gradient)."""
    live = [g for g in grads if g is not None]
    g_dtype = live[0].dtype if live and all(g.dtype == live[0].dtype for g in live) else torch.float32
    if g_dtype not in _TORCH_TO_TL:
        g_dtype = torch.float32
    gs = [None if g is None else g.detach().to(g_dtype).contiguous() for g in grads]
    n_ring = plan.ring_size
    addr = torch.tensor([0 if g is None else g.data_ptr() for g in gs], dtype=torch.int64)
    addr = addr.to(device, non_blocking=True) if device.type == "cuda" else addr
    nblocks = (n_ring + BWD_BLOCK - 1) // BWD_BLOCK
    target = 4 * _num_sms(device)
    splits = max(1, min(plan.max_turns(), -(-target // nblocks), max(1, (64 << 20) // (4 * n_ring))))
    part = torch.empty((splits, n_ring), dtype=torch.float32, device=device)
    meta = plan.cached("meta", device, lambda: plan.meta)
    mult = plan.mult(torch.float32, device)
    _backward_kernel[(nblocks, splits)](
        addr, part, meta, mult, n_ring, plan.num_layers, splits,
        W=META_WIDTH, RB=BWD_BLOCK, G_DT=_TORCH_TO_TL[g_dtype],
    )
    ring_grad = part[0] if splits == 1 else part.sum(0)
    # keep the gradients alive until the kernel has read them (the caller's stream order does the rest)
    del gs
    return ring_grad.to(ring_dtype)
