"""Triton kernels: one launch generates every layer of a ring, one launch folds the gradient back.

Both kernels recompute indices and signs from the packed layer table of a
:class:`~rpg_hf.ops.plan.RingPlan` (uint32 arithmetic, hash32 evaluated inline; no stored
index or round tables), following generator versions 1 and 2 of :mod:`rpg_hf.core.construction` bit for
bit (version 2: the Feistel rounds act on the block index ``j >> 5``, the sign is bit ``j & 31`` of the
block's hash, and reads and gathers run over 32 contiguous entries).

* forward: the layers' outputs (separate tensors, written through a table of their addresses, in
  the ring's dtype or directly in the requested one, e.g. the autocast dtype) are cut into blocks of
  ``BLOCK`` elements; a program finds its layer from the per-layer block starts, computes
  ``p = π(j)`` (four Feistel rounds, then cycle walking while any lane is outside ``[0, n)``),
  reads ``ring[(o + p) mod N]`` and writes ``s(j) · m · ring[...]``.  Divisions by ``a``, ``b``
  and ``N`` are multiply-highs with precomputed magic numbers (:func:`udiv_magic`).
* backward: program ``(rb, s)`` owns ring entries ``[rb·RB, (rb+1)·RB)``; for every layer and every
  turn ``i ≡ s (mod S)`` of the layer's window around the ring it gathers the weight gradient at
  ``j = π⁻¹(k)``, ``k = i·N + r − o``, times ``m · s(j)``, and sums in registers.  Every ring entry
  is written by exactly one program per split ``s`` — no atomics, deterministic — and the ``S``
  partial rows are summed afterwards (``S = 1`` when the ring alone fills the GPU).

The weight gradients are read in place through a small table of their addresses (one per layer),
so nothing is concatenated.  Besides the ring, the only device memory is O(layers) tables cached
on the plan (layer table, magic numbers, block starts) and the per-call address tables.

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

from rpg_hf.ops.plan import META_WIDTH, RingPlan

MAX_N = 2**32 - 2**18  # keeps x * b + y < 2**32 in uint32 (a * b < n + b)
FWD_BLOCK = 1024
BWD_BLOCK = 256
_TORCH_TO_TL = {}


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def supports(ring: torch.Tensor, plan: RingPlan, dtype: torch.dtype | None = None) -> bool:
    """Whether these kernels can generate ``plan`` from ``ring`` (into ``dtype``)."""
    if not HAVE_TRITON:
        return False
    if not (ring.is_cuda or (interpreting() and ring.device.type == "cpu")):
        return False
    if ring.dtype == torch.float64:  # float64 rings: float64 weights only (no double rounding to emulate)
        if dtype not in (None, torch.float64):
            return False
    elif ring.dtype not in (torch.float32, torch.float16, torch.bfloat16) or dtype not in (
        None, torch.float32, torch.float16, torch.bfloat16
    ):
        return False
    return plan.ring_size < 2**31 and max(plan.numels, default=0) < MAX_N


if HAVE_TRITON:
    _TORCH_TO_TL = {
        torch.float32: tl.float32,
        torch.float64: tl.float64,
        torch.float16: tl.float16,
        torch.bfloat16: tl.bfloat16,
    }

    # Only builtins of triton.language are used (tl.reduce with local combine functions, not
    # tl.sum / tl.max / tl.zeros): those are @jit functions of triton.language itself, which the
    # interpreter (tests) can only run when TRITON_INTERPRET was set before triton was imported.
    @triton.jit
    def _add(a, b):
        return a + b

    @triton.jit
    def _maximum(a, b):
        return tl.where(a > b, a, b)

    @triton.jit
    def _round_to(v, DT: tl.constexpr):
        """``v`` rounded to ``DT`` as torch rounds (nearest even); bfloat16 done with integer ops."""
        if DT == tl.bfloat16:
            bits = v.to(tl.float32).to(tl.uint32, bitcast=True)
            rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
            rounded = tl.where((bits & 0x7FFFFFFF) > 0x7F800000, 0x7FC0, rounded)  # NaN: c10's 0x7FC0
            return rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True)
        else:
            return v.to(DT)

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
    def _udiv(v, m, s1, s2):
        """v // d for uint32 lanes, with (m, s1, s2) = udiv_magic(d): a mulhi and shifts, no division."""
        t = tl.umulhi(v, m)
        return (t + ((v - t) >> s1)) >> s2

    @triton.jit
    def _umod(v, d, m, s1, s2):
        return v - _udiv(v, m, s1, s2) * d

    @triton.jit
    def _rounds_fwd(x, y, a, b, k0, k1, k2, k3, ma, sa1, sa2, mb, sb1, sb2):
        x = x + _umod(_hash32(y, k0), a, ma, sa1, sa2)
        x = tl.where(x >= a, x - a, x)
        y = y + _umod(_hash32(x, k1), b, mb, sb1, sb2)
        y = tl.where(y >= b, y - b, y)
        x = x + _umod(_hash32(y, k2), a, ma, sa1, sa2)
        x = tl.where(x >= a, x - a, x)
        y = y + _umod(_hash32(x, k3), b, mb, sb1, sb2)
        y = tl.where(y >= b, y - b, y)
        return x, y

    @triton.jit
    def _rounds_inv(x, y, a, b, k0, k1, k2, k3, ma, sa1, sa2, mb, sb1, sb2):
        t = _umod(_hash32(x, k3), b, mb, sb1, sb2)
        y = tl.where(y >= t, y - t, y + b - t)
        t = _umod(_hash32(y, k2), a, ma, sa1, sa2)
        x = tl.where(x >= t, x - t, x + a - t)
        t = _umod(_hash32(x, k1), b, mb, sb1, sb2)
        y = tl.where(y >= t, y - t, y + b - t)
        t = _umod(_hash32(y, k0), a, ma, sa1, sa2)
        x = tl.where(x >= t, x - t, x + a - t)
        return x, y

    @triton.jit
    def _permute(j, valid, n, a, b, k0, k1, k2, k3, ma, sa1, sa2, mb, sb1, sb2, INVERSE: tl.constexpr):
        """π(j) (or π⁻¹(j)) for uint32 lanes ``j`` in [0, n); lanes not ``valid`` are left alone."""
        x = _udiv(j, mb, sb1, sb2)
        y = j - x * b
        if INVERSE:
            x, y = _rounds_inv(x, y, a, b, k0, k1, k2, k3, ma, sa1, sa2, mb, sb1, sb2)
        else:
            x, y = _rounds_fwd(x, y, a, b, k0, k1, k2, k3, ma, sa1, sa2, mb, sb1, sb2)
        p = x * b + y
        outside = valid & (p >= n)
        # cycle walking: few lanes (< 1/a of them) leave [0, n); re-apply the rounds to those
        while tl.reduce(outside.to(tl.int32), 0, _maximum) > 0:
            x = _udiv(p, mb, sb1, sb2)
            y = p - x * b
            if INVERSE:
                x, y = _rounds_inv(x, y, a, b, k0, k1, k2, k3, ma, sa1, sa2, mb, sb1, sb2)
            else:
                x, y = _rounds_fwd(x, y, a, b, k0, k1, k2, k3, ma, sa1, sa2, mb, sb1, sb2)
            p = tl.where(outside, x * b + y, p)
            outside = valid & (p >= n)
        return p

    @triton.jit
    def _load_layer(meta_ptr, layer, W: tl.constexpr):
        row = meta_ptr + layer * W
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

    @triton.jit
    def _load_magic(magic_ptr, layer):
        row = magic_ptr + layer * 6
        ma = tl.load(row + 0).to(tl.uint32)
        sa1 = tl.load(row + 1).to(tl.uint32)
        sa2 = tl.load(row + 2).to(tl.uint32)
        mb = tl.load(row + 3).to(tl.uint32)
        sb1 = tl.load(row + 4).to(tl.uint32)
        sb2 = tl.load(row + 5).to(tl.uint32)
        return ma, sa1, sa2, mb, sb1, sb2

    @triton.jit(do_not_specialize=["N", "L"])
    def _forward_kernel(
        ring_ptr, oaddr_ptr, otype_ptr, meta_ptr, magic_ptr, mult_ptr, blk_ptr, N, L,
        W: tl.constexpr, LPAD: tl.constexpr, BLOCK: tl.constexpr,
        COMPUTE: tl.constexpr, RING_DT: tl.constexpr, OUT_DT: tl.constexpr,
    ):
        # oaddr_ptr: int64 addresses of the per-layer outputs; otype_ptr: one of them (its pointer type)
        pid = tl.program_id(0)
        li = tl.arange(0, LPAD)
        starts = tl.load(blk_ptr + li, mask=li < L, other=2**31 - 1)
        layer = tl.reduce((starts <= pid).to(tl.int32), 0, _add) - 1  # the layer this block belongs to
        blk = pid - tl.load(blk_ptr + layer)
        n, a, b, o, flags, k0, k1, k2, k3, ks = _load_layer(meta_ptr, layer, W)
        ma, sa1, sa2, mb, sb1, sb2 = _load_magic(magic_ptr, layer)
        mn, sn1, sn2, _u0, _u1, _u2 = _load_magic(magic_ptr, L)  # the last row: N's magic
        m = tl.load(mult_ptr + layer).to(COMPUTE)
        j = (blk.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)).to(tl.uint32)
        valid = j < n
        if (flags & 4) != 0:  # generator version 2: blocks of 32 moved by π1 of the block index
            blk_i = j >> 5
            nb = n >> 5
            if (flags & 1) != 0:
                pb = _permute(blk_i, valid & (blk_i < nb), nb, a, b, k0, k1, k2, k3, ma, sa1, sa2, mb, sb1, sb2, False)
                p = tl.where(blk_i < nb, pb * 32 + (j & 31), j)
            else:
                p = j
            sbits = (_hash32(blk_i, ks) >> (j & 31)) & 1
        else:
            if (flags & 1) != 0:
                p = _permute(j, valid, n, a, b, k0, k1, k2, k3, ma, sa1, sa2, mb, sb1, sb2, False)
            else:
                p = j
            sbits = _hash32(j, ks) >> 31
        nu = N.to(tl.uint32)
        idx = o + _umod(p, nu, mn, sn1, sn2)
        idx = tl.where(idx >= nu, idx - nu, idx)
        r = tl.load(ring_ptr + idx, mask=valid, other=0.0)
        v = r.to(COMPUTE) * m
        neg = (sbits != 0) & ((flags & 2) != 0)
        # negating before rounding to the ring's / output dtype gives the same bits (rounding is odd)
        v = _round_to(_round_to(tl.where(neg, -v, v), RING_DT), OUT_DT)
        out_ptr = tl.load(oaddr_ptr + layer).to(otype_ptr.dtype)
        tl.store(out_ptr + j.to(tl.int64), v, mask=valid)

    @triton.jit(do_not_specialize=["N", "L", "S"])
    def _backward_kernel(
        gaddr_ptr, gtype_ptr, part_ptr, meta_ptr, magic_ptr, mult_ptr, N, L, S,
        W: tl.constexpr, RB: tl.constexpr,
    ):
        # gaddr_ptr: int64 addresses of the per-layer gradients (0: none); gtype_ptr: any tensor of
        # their dtype, whose pointer type the addresses are cast to
        rb = tl.program_id(0)
        s = tl.program_id(1)
        r = rb * RB + tl.arange(0, RB)
        rvalid = r < N
        N64 = N.to(tl.int64)
        r64 = r.to(tl.int64)
        acc = tl.full([RB], 0.0, tl.float32)
        for layer in range(L):
            addr = tl.load(gaddr_ptr + layer)
            if addr != 0:  # 0: this layer got no gradient
                g_ptr = addr.to(gtype_ptr.dtype)
                n, a, b, o, flags, k0, k1, k2, k3, ks = _load_layer(meta_ptr, layer, W)
                ma, sa1, sa2, mb, sb1, sb2 = _load_magic(magic_ptr, layer)
                m = tl.load(mult_ptr + layer)
                n64 = n.to(tl.int64)
                o64 = o.to(tl.int64)
                rel = r64 - o64  # k = i * N + r - o on turn i
                # turns i whose k-range [i*N + r0 - o, i*N + r0 + RB - o) meets [0, n), i = s mod S
                r0 = rb.to(tl.int64) * RB
                t = o64 - r0 - RB
                i_lo = tl.where(t < 0, 0, t // N64 + 1)
                num = o64 + n64 - 1 - r0
                i_hi = tl.where(num < 0, -1, num // N64)
                i_start = i_lo + (s - i_lo % S + S) % S
                for i in range(i_start.to(tl.int32), (i_hi + 1).to(tl.int32), S):
                    k = rel + i * N64
                    valid = rvalid & (k >= 0) & (k < n64)
                    ku = tl.where(valid, k, 0).to(tl.uint32)
                    if (flags & 4) != 0:  # generator version 2: window block -> weight block by π1⁻¹
                        kb = ku >> 5
                        nb = n >> 5
                        if (flags & 1) != 0:
                            jb = _permute(kb, valid & (kb < nb), nb, a, b, k0, k1, k2, k3, ma, sa1, sa2, mb, sb1,
                                          sb2, True)
                            jj = tl.where(kb < nb, jb * 32 + (ku & 31), ku)
                        else:
                            jj = ku
                        sbits = (_hash32(jj >> 5, ks) >> (jj & 31)) & 1
                    else:
                        if (flags & 1) != 0:
                            jj = _permute(ku, valid, n, a, b, k0, k1, k2, k3, ma, sa1, sa2, mb, sb1, sb2, True)
                        else:
                            jj = ku
                        sbits = _hash32(jj, ks) >> 31
                    g = tl.load(g_ptr + jj.to(tl.int64), mask=valid, other=0.0).to(tl.float32)
                    v = g * m
                    neg = (sbits != 0) & ((flags & 2) != 0)
                    v = tl.where(neg, -v, v)
                    acc += tl.where(valid, v, 0.0)
        tl.store(part_ptr + s.to(tl.int64) * N + r, acc, mask=rvalid)


def udiv_magic(d: int) -> tuple[int, int, int]:
    """(m, s1, s2) such that for every uint32 v: v // d == (t + ((v - t) >> s1)) >> s2, t = mulhi(v, m).

    Granlund & Montgomery (1994), fig. 4.1, for 1 <= d < 2**32: division by an invariant integer
    as a multiply-high and two shifts (an integer division is ~20 instructions on a GPU).
    """
    if not 1 <= d < 2**32:
        raise ValueError(f"divisor out of range: {d}")
    ceil_log2 = (d - 1).bit_length()
    m = ((1 << 32) * ((1 << ceil_log2) - d)) // d + 1
    return m, min(ceil_log2, 1), max(ceil_log2 - 1, 0)


def _magic_table(plan: RingPlan) -> torch.Tensor:
    rows = [[*udiv_magic(row[1]), *udiv_magic(row[2])] for row in plan.meta_rows]
    rows.append([*udiv_magic(plan.ring_size), 0, 0, 0])
    return torch.tensor(rows, dtype=torch.int64)


def _next_pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def _tables(plan: RingPlan, device: torch.device):
    meta = plan.cached("meta", device, lambda: plan.meta)
    magic = plan.cached("magic", device, lambda: _magic_table(plan))
    blocks = [(n + FWD_BLOCK - 1) // FWD_BLOCK for n in plan.numels]
    starts = [0]
    for nb in blocks:
        starts.append(starts[-1] + nb)
    blk = plan.cached("fwd_blocks", device, lambda: torch.tensor(starts, dtype=torch.int32))
    return meta, magic, blk, starts[-1]


def _addresses(tensors, device: torch.device) -> torch.Tensor:
    """int64 data pointers (0 for None) as a small tensor on ``device``, for the kernels' tables."""
    addr = torch.tensor([0 if t is None else t.data_ptr() for t in tensors], dtype=torch.int64)
    return addr.to(device, non_blocking=True) if device.type == "cuda" else addr


def forward(ring: torch.Tensor, plan: RingPlan, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, ...]:
    """Every layer of ``plan`` as its own new tensor (``dtype``, default the ring's), in one launch.

    The layers are separate allocations written through a table of their addresses: no flat buffer,
    so the outputs are not views of one another (autograd and custom ops need no view handling).
    """
    ring = ring.detach().contiguous()
    out_dtype = dtype or ring.dtype
    outs = tuple(torch.empty(shape, dtype=out_dtype, device=ring.device) for shape in plan.shapes)
    if plan.total == 0:
        return outs
    compute = torch.float64 if ring.dtype == torch.float64 else torch.float32
    meta, magic, blk, nblocks = _tables(plan, ring.device)
    mult = plan.mult(compute, ring.device)
    _forward_kernel[(nblocks,)](
        ring, _addresses(outs, ring.device), outs[0], meta, magic, mult, blk, plan.ring_size, plan.num_layers,
        W=META_WIDTH, LPAD=max(2, _next_pow2(plan.num_layers + 1)), BLOCK=FWD_BLOCK,
        COMPUTE=_TORCH_TO_TL[compute], RING_DT=_TORCH_TO_TL[ring.dtype], OUT_DT=_TORCH_TO_TL[out_dtype],
    )
    return outs


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
    addr = _addresses(gs, device)
    nblocks = (n_ring + BWD_BLOCK - 1) // BWD_BLOCK
    target = 8 * _num_sms(device)
    splits = max(1, min(plan.max_turns(), -(-target // nblocks), max(1, (64 << 20) // (4 * n_ring))))
    part = torch.empty((splits, n_ring), dtype=torch.float32, device=device)
    meta = plan.cached("meta", device, lambda: plan.meta)
    magic = plan.cached("magic", device, lambda: _magic_table(plan))
    mult = plan.mult(torch.float32, device)
    gtype = next((g for g in gs if g is not None), None)
    if gtype is None:
        gtype = torch.empty(1, dtype=g_dtype, device=device)
    _backward_kernel[(nblocks, splits)](
        addr, gtype, part, meta, magic, mult, n_ring, plan.num_layers, splits, W=META_WIDTH, RB=BWD_BLOCK,
    )
    ring_grad = part[0] if splits == 1 else part.sum(0)
    # keep the gradients alive until the kernel has read them (the caller's stream order does the rest)
    del gs
    return ring_grad.to(ring_dtype)
