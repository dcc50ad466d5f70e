"""Generator version 2 (blocks of 32): golden vectors, bijectivity, inverse, balance, bit-exact generation.

Golden values are *derived*: ``spec_v2`` re-implements version 2 from its specification text (the
docstring of ``rpg_hf.core.construction``) in plain Python ints, and the package must equal it
element for element.  The literal vectors are kept as well, so a change of the spec module itself
cannot go unnoticed.  Version 1 keeps its own file (``test_construction.py``), unchanged.
"""

from __future__ import annotations

import math

import pytest
import spec_v1
import spec_v2
import torch

from rpg_hf.core.construction import (
    BLOCK,
    GENERATOR_VERSION,
    SUPPORTED_GENERATOR_VERSIONS,
    LayerKeys,
    layer_permutation,
)
from rpg_hf.core.reference import LayerSlot, fold_window, generate_layer, layer_indices, window_grad

RING = 1000
# (position, layer size, unwrapped start) laid end to end on a ring of 1000 entries, seed 0:
# 320 = 10 blocks (smaller than the ring), 5024 = 157 blocks (larger: wraps five times),
# 777 = 24 blocks + a tail of 9.  First 8 indices and signs, indices 32..35 (the second block),
# and the last 5 indices and signs (for 777: the tail, in place).
GOLDEN = {
    0: (320, 0, [32, 33, 34, 35, 36, 37, 38, 39], [-1, -1, -1, 1, 1, -1, 1, 1],
        [96, 97, 98, 99], [283, 284, 285, 286, 287], [-1, -1, 1, 1, 1]),
    1: (5024, 320, [384, 385, 386, 387, 388, 389, 390, 391], [1, 1, 1, -1, -1, 1, 1, 1],
        [352, 353, 354, 355], [419, 420, 421, 422, 423], [1, 1, -1, -1, -1]),
    2: (777, 5344, [984, 985, 986, 987, 988, 989, 990, 991], [1, 1, 1, -1, 1, -1, -1, -1],
        [568, 569, 570, 571], [116, 117, 118, 119, 120], [-1, 1, 1, 1, 1]),
}
# no full block (n < 32), exactly one block, one block + tail (n_b = 1), two blocks (+ tail),
# a prime, and n_b = 4097 (grid 64 x 65 = 4160 > 4097: π1 walks cycles), with and without a tail
SIZES = [1, 5, 31, 32, 33, 50, 63, 64, 65, 96, 100, 777, 1000, 10_007, 4097 * BLOCK, 4097 * BLOCK + 5]


def _signs(neg: torch.Tensor) -> list[int]:
    return (1 - 2 * neg.int()).tolist()


def _package(n, start, ring, seed, position, **switches):
    slot = LayerSlot(position, (n,), start, 1.0, seed=seed, version=2, **switches)
    idx, neg = layer_indices(slot, ring)
    return idx.tolist(), _signs(neg)


def test_version_2_is_the_default_and_blocks_are_32():
    assert GENERATOR_VERSION == 2 and set(SUPPORTED_GENERATOR_VERSIONS) == {1, 2}
    assert BLOCK == spec_v2.B == 32


def test_golden_vectors_are_the_specs():
    """The recorded literals are what the specification text gives (not just what the code gives)."""
    for position, (n, start, first_idx, first_sign, second_block, last_idx, last_sign) in GOLDEN.items():
        idx, signs = spec_v2.layer_indices(n, start, RING, seed=0, position=position)
        assert idx[:8] == first_idx and signs[:8] == first_sign and idx[32:36] == second_block, position
        assert idx[-5:] == last_idx and signs[-5:] == last_sign, position


@pytest.mark.parametrize("position", sorted(GOLDEN))
def test_golden_indices_and_signs(position):
    n, start, first_idx, first_sign, second_block, last_idx, last_sign = GOLDEN[position]
    idx, signs = _package(n, start, RING, 0, position)
    assert idx[:8] == first_idx and signs[:8] == first_sign and idx[32:36] == second_block
    assert idx[-5:] == last_idx and signs[-5:] == last_sign
    assert (idx, signs) == spec_v2.layer_indices(n, start, RING, seed=0, position=position)


def test_layouts_are_laid_end_to_end():
    starts = [start for _, start, *_ in GOLDEN.values()]
    sizes = [n for n, *_ in GOLDEN.values()]
    assert starts == [sum(sizes[:k]) for k in range(len(sizes))]


@pytest.mark.parametrize("n", SIZES)
def test_every_index_and_sign_matches_the_spec(n):
    seed, position, start, ring = 5, n % 7, 123, 997
    assert _package(n, start, ring, seed, position) == spec_v2.layer_indices(n, start, ring, seed, position)


@pytest.mark.parametrize("start,ring", [(0, 10), (12_345, 31), (7, 32), (3 * 2**40 + 1, 1009)])
def test_small_rings_and_large_starts_match_the_spec(start, ring):
    """Rings shorter than a block (a block's run of 32 wraps inside it) and starts far past the ring."""
    for n in (29, 97, 640):
        assert _package(n, start, ring, 2**64 + 3, 11) == spec_v2.layer_indices(n, start, ring, 2**64 + 3, 11)


def test_the_spec_is_consistent_with_itself():
    """spec_v2's block-wise layer_indices equals its per-position π and s (two readings of the text)."""
    for n in (31, 65, 777, 4097 * BLOCK + 5):
        keys = spec_v1.sub_keys(5, n % 7)
        perm = spec_v2.Permutation(n, keys)
        idx, signs = spec_v2.layer_indices(n, 123, 997, 5, n % 7)
        sample = range(n) if n < 1000 else range(0, n, 37)
        assert all(idx[j] == (123 + perm(j)) % 997 and signs[j] == spec_v2.sign(j, keys) for j in sample), n


def test_cycle_walking_is_exercised():
    """With n_b = 4097 some blocks' first Feistel pass lands outside [0, n_b) (so the walk is tested)."""
    nb = 4097
    pi1 = spec_v1.Permutation(nb, spec_v1.sub_keys(5, (nb * BLOCK) % 7))
    assert (pi1.a, pi1.b) == (64, 65)
    walked = [i for i in range(nb) if pi1._rounds(i, False) >= nb]
    assert walked and all(0 <= pi1(i) < nb for i in walked)


@pytest.mark.parametrize("permute,sign_flip", [(True, True), (False, True), (True, False), (False, False)])
def test_switches_match_the_spec(permute, sign_flip):
    n, start, ring = 700, 123, 97
    ours = _package(n, start, ring, 2, 4, permute=permute, sign_flip=sign_flip)
    assert ours == spec_v2.layer_indices(n, start, ring, 2, 4, permute=permute, sign_flip=sign_flip)
    idx, signs = ours
    if not permute:
        assert idx == [(start + j) % ring for j in range(n)]
    if not sign_flip:
        assert signs == [1] * n
    else:
        assert set(signs) == {1, -1}


@pytest.mark.parametrize("n", SIZES)
def test_permutation_is_the_specs_bijection_forward_and_inverse(n):
    """Exhaustive: π and π⁻¹ on every position equal spec_v2's, are inverse, and move whole blocks."""
    keys = LayerKeys.derive(3, n)
    spec_keys = spec_v1.sub_keys(3, n)
    assert [*keys.rounds, keys.sign] == spec_keys
    perm = layer_permutation(n, keys, 2)
    ref = spec_v2.Permutation(n, spec_keys)
    j = torch.arange(n)
    p, q = perm.forward(j), perm.inverse(j)
    assert p.tolist() == [ref(k) for k in range(n)]
    assert q.tolist() == [ref.inverse(k) for k in range(n)]
    assert torch.equal(torch.sort(p).values, j)
    assert torch.equal(perm.inverse(p), j) and torch.equal(perm.forward(q), j)
    full = n // BLOCK * BLOCK
    assert torch.equal(p[full:], j[full:]) and torch.equal(q[full:], j[full:])  # the tail stays in place
    blocks = p[:full].view(-1, BLOCK)
    assert torch.equal(blocks - blocks[:, :1], torch.arange(BLOCK).expand_as(blocks))  # runs of 32
    assert torch.equal(blocks[:, 0] % BLOCK, torch.zeros(len(blocks), dtype=blocks.dtype))  # block-aligned


@pytest.mark.parametrize("n", [33, 1000, 4097 * BLOCK + 5])
def test_permutation_random_access(n):
    """Any positions, in any order, repeated, one at a time: the same values as the whole layer."""
    perm = layer_permutation(n, LayerKeys.derive(8, 1), 2)
    ref = spec_v2.Permutation(n, spec_v1.sub_keys(8, 1))
    g = torch.Generator().manual_seed(n)
    pos = torch.cat([torch.randint(0, n, (500,), generator=g), torch.tensor([n - 1, 0, n - 1, 0])])
    assert perm.forward(pos).tolist() == [ref(int(k)) for k in pos]
    assert perm.inverse(pos).tolist() == [ref.inverse(int(k)) for k in pos]
    for k in (0, n - 1, n // 2):
        assert int(perm.forward(torch.tensor([k]))) == ref(k)
        assert int(perm.inverse(torch.tensor([k]))) == ref.inverse(k)


def test_blocks_move_far_and_the_permutation_is_not_trivial():
    nb = 10_000
    p = layer_permutation(nb * BLOCK, LayerKeys.derive(0, 0), 2).forward(torch.arange(nb * BLOCK))
    starts = p[::BLOCK] // BLOCK
    assert (starts == torch.arange(nb)).float().mean() < 0.01
    assert (starts[1:] - starts[:-1]).abs().float().mean() > nb / 10


def test_signs_are_balanced_per_layer_and_per_lane():
    n = 100_000 + 17  # a tail of 17 as well
    _, neg = layer_indices(LayerSlot(0, (n,), 0, 1.0, version=2), 10)
    assert 0.48 < neg.float().mean() < 0.52
    lanes = neg[: n // BLOCK * BLOCK].view(-1, BLOCK).float()
    assert ((lanes.mean(0) > 0.45) & (lanes.mean(0) < 0.55)).all()  # every lane u is a fair bit
    per_block = lanes.mean(1)
    assert 0.45 < per_block.mean() < 0.55 and (per_block > 0).all() and (per_block < 1).all()


def test_every_ring_entry_used_floor_or_ceil_times():
    for ring in (997, 31, 4096):
        shapes = [(64, 3, 3, 3), (128, 64, 1, 1), (10, 7), (333,), (5, 5), (1,)]
        start, counts = 0, torch.zeros(ring, dtype=torch.int64)
        for pos, shape in enumerate(shapes):
            slot = LayerSlot(pos, shape, start, 1.0, seed=11, version=2)
            idx, _ = layer_indices(slot, ring)
            counts += torch.bincount(idx, minlength=ring)
            start += slot.numel
        assert int(counts.sum()) == start
        assert set(counts.unique().tolist()) <= {start // ring, -(-start // ring)}, ring


def _ring_values(size):
    return [spec_v1.f32(((i * 2654435761) % 1000 - 500) / 512 + 1 / 3) for i in range(size)]


LAYERS = [  # (shape, multiplier): conv m = sqrt(4608 / fan_out), a linear, a layer with n < 32
    ((16, 4, 3, 3), math.sqrt(4608 / (16 * 9))),
    ((70, 5), math.sqrt(4608 / 70)),
    ((64, 16, 1, 1), math.sqrt(4608 / 64)),
    ((7,), 0.1),
    ((33,), 0.5),
]


def test_generation_is_the_spec_bit_for_bit():
    ring_values = _ring_values(401)
    rows = spec_v2.expand_float32(ring_values, LAYERS, seed=9)
    ring = torch.tensor(ring_values, dtype=torch.float32)
    start = 0
    for position, ((shape, m), row) in enumerate(zip(LAYERS, rows, strict=True)):
        slot = LayerSlot(position, shape, start, m, seed=9, version=2)
        w = generate_layer(ring, slot)
        assert w.shape == shape and w.dtype == torch.float32
        want = torch.tensor(row, dtype=torch.float32)
        assert torch.equal(w.reshape(-1).view(torch.int32), want.view(torch.int32)), position
        start += slot.numel


def test_window_gradient_is_the_specs_transpose_bit_for_bit():
    """window[π(j)] = s(j) · (m · g[j]) in float32; folded onto the ring it is dL/dring of sum(g ⊙ W)."""
    n_ring = 401
    start = 0
    for position, (shape, m) in enumerate(LAYERS):
        slot = LayerSlot(position, shape, start, m, seed=9, version=2)
        n = slot.numel
        g = torch.randn(shape, dtype=torch.float32, generator=torch.Generator().manual_seed(position))
        window = window_grad(g, slot)
        keys = spec_v1.sub_keys(9, position)
        perm = spec_v2.Permutation(n, keys)
        mf = spec_v1.f32(m)
        want = [0.0] * n
        for j, gj in enumerate(g.reshape(-1).tolist()):
            want[perm(j)] = spec_v2.sign(j, keys) * spec_v1.f32(mf * gj)
        assert window.shape == (n,) and window.dtype == torch.float32
        assert torch.equal(window.view(torch.int32), torch.tensor(want, dtype=torch.float32).view(torch.int32))
        ours = torch.zeros(n_ring, dtype=torch.float64)
        fold_window(ours, window.double(), slot.start)
        idx, signs = spec_v2.layer_indices(n, start, n_ring, 9, position)
        ref = torch.zeros(n_ring, dtype=torch.float64)
        for j, (i, s) in enumerate(zip(idx, signs, strict=True)):
            ref[i] += s * spec_v1.f32(mf * float(g.reshape(-1)[j]))
        torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
        start += n


def test_versions_differ_version_1_is_unchanged_and_unknown_ones_are_refused():
    a = layer_indices(LayerSlot(1, (500,), 0, 1.0, version=1), 97)[0]
    b = layer_indices(LayerSlot(1, (500,), 0, 1.0, version=2), 97)[0]
    assert not torch.equal(a, b)
    keys = LayerKeys.derive(0, 1)
    v1 = spec_v1.Permutation(500, spec_v1.sub_keys(0, 1))
    assert layer_permutation(500, keys, 1).forward(torch.arange(500)).tolist() == [v1(j) for j in range(500)]
    with pytest.raises(ValueError, match="unknown RPG generator_version 3"):
        LayerSlot(1, (500,), 0, 1.0, version=3)
