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

from rpg_hf.core.construction import BLOCK, GENERATOR_VERSION, LayerKeys, layer_permutation
from rpg_hf.core.reference import LayerSlot, fold_window, generate_layer, layer_indices, window_grad

RING = 1000
# (position, layer size, unwrapped start) laid end to end on a ring of 1000 entries, seed 0 (the
# layouts of test_construction.py): first 8 indices and signs, and indices 32..35 (the second block)
GOLDEN = {
    0: (300, 0, [96, 97, 98, 99, 100, 101, 102, 103], [-1, -1, -1, 1, 1, -1, 1, 1], [64, 65, 66, 67]),
    1: (5000, 300, [36, 37, 38, 39, 40, 41, 42, 43], [1, 1, 1, -1, -1, 1, 1, 1], [332, 333, 334, 335]),
    2: (777, 5300, [940, 941, 942, 943, 944, 945, 946, 947], [1, 1, 1, -1, 1, -1, -1, -1], [524, 525, 526, 527]),
}
# fewer than one / two full blocks, exact blocks, a tail, primes, 4097 blocks (cycle walking in π1)
SIZES = [1, 5, 31, 32, 33, 63, 64, 65, 96, 100, 1000, 10_007, 4097 * BLOCK, 4097 * BLOCK + 5]


def _signs(neg: torch.Tensor) -> list[int]:
    return (1 - 2 * neg.int()).tolist()


def test_version_2_is_the_default_and_blocks_are_32():
    assert GENERATOR_VERSION == 2 and BLOCK == spec_v2.B == 32


def test_golden_vectors_are_the_specs():
    for position, (n, start, first_idx, first_sign, second_block) in GOLDEN.items():
        idx, signs = spec_v2.layer_indices(n, start, RING, seed=0, position=position)
        assert idx[:8] == first_idx and signs[:8] == first_sign and idx[32:36] == second_block, position


@pytest.mark.parametrize("position", sorted(GOLDEN))
def test_golden_indices_and_signs(position):
    n, start, first_idx, first_sign, second_block = GOLDEN[position]
    idx, neg = layer_indices(LayerSlot(position, (n,), start, 1.0, seed=0, version=2), RING)
    assert idx[:8].tolist() == first_idx and _signs(neg[:8]) == first_sign and idx[32:36].tolist() == second_block
    spec_idx, spec_sign = spec_v2.layer_indices(n, start, RING, seed=0, position=position)
    assert idx.tolist() == spec_idx and _signs(neg) == spec_sign


@pytest.mark.parametrize("n", SIZES)
def test_every_index_and_sign_matches_the_spec(n):
    seed, position, start, ring = 5, n % 7, 123, 997
    idx, neg = layer_indices(LayerSlot(position, (n,), start, 1.0, seed=seed, version=2), ring)
    spec_idx, spec_sign = spec_v2.layer_indices(n, start, ring, seed, position)
    assert idx.tolist() == spec_idx and _signs(neg) == spec_sign


@pytest.mark.parametrize("permute,sign_flip", [(False, True), (True, False), (False, False)])
def test_switches_match_the_spec(permute, sign_flip):
    n, start, ring = 700, 123, 97
    slot = LayerSlot(4, (n,), start, 1.0, seed=2, permute=permute, sign_flip=sign_flip, version=2)
    idx, neg = layer_indices(slot, ring)
    spec_idx, spec_sign = spec_v2.layer_indices(n, start, ring, 2, 4, permute=permute, sign_flip=sign_flip)
    assert idx.tolist() == spec_idx and _signs(neg) == spec_sign


@pytest.mark.parametrize("n", SIZES)
def test_permutation_is_a_block_bijection_with_its_inverse(n):
    keys = LayerKeys.derive(3, n)
    perm = layer_permutation(n, keys, 2)
    j = torch.arange(n)
    p = perm.forward(j)
    assert torch.equal(torch.sort(p).values, j)
    assert torch.equal(perm.inverse(p), j) and torch.equal(perm.forward(perm.inverse(j)), j)
    full = n // BLOCK * BLOCK
    assert torch.equal(p[full:], j[full:])  # the tail stays in place
    blocks = p[:full].view(-1, BLOCK)
    assert torch.equal(blocks - blocks[:, :1], torch.arange(BLOCK).expand_as(blocks))  # 32 contiguous entries
    ref = spec_v2.Permutation(n, spec_v1.sub_keys(3, n))
    sample = sorted({0, n - 1, n // 2, min(n - 1, 40), max(0, full - 1)})
    assert [int(p[k]) for k in sample] == [ref(k) for k in sample]
    assert [int(perm.inverse(torch.tensor([k]))) for k in sample] == [ref.inverse(k) for k in sample]


def test_blocks_move_far_and_the_permutation_is_not_trivial():
    n = 32 * 10_000
    p = layer_permutation(n, LayerKeys.derive(0, 0), 2).forward(torch.arange(n))
    starts = p[::BLOCK] // BLOCK
    assert (starts == torch.arange(10_000)).float().mean() < 0.01
    assert (starts[1:] - starts[:-1]).abs().float().mean() > 10_000 / 10


def test_signs_are_balanced_and_differ_within_a_block():
    _, neg = layer_indices(LayerSlot(0, (100_000,), 0, 1.0, version=2), 10)
    assert 0.48 < neg.float().mean() < 0.52
    per_block = neg[: 100_000 // 32 * 32].view(-1, 32).float().mean(1)
    assert 0.45 < per_block.mean() < 0.55 and (per_block > 0).all() and (per_block < 1).all()


def test_every_ring_entry_used_floor_or_ceil_times():
    ring = 997
    shapes = [(64, 3, 3, 3), (128, 64, 1, 1), (10, 7), (333,), (5, 5)]
    start, counts = 0, torch.zeros(ring, dtype=torch.int64)
    for pos, shape in enumerate(shapes):
        slot = LayerSlot(pos, shape, start, 1.0, seed=11, version=2)
        idx, _ = layer_indices(slot, ring)
        counts += torch.bincount(idx, minlength=ring)
        start += slot.numel
    assert int(counts.sum()) == start
    assert set(counts.unique().tolist()) <= {start // ring, -(-start // ring)}


def test_generation_and_gradient_are_the_specs_bit_for_bit():
    """float32 weights equal spec_v2.expand_float32; the window gradient is the exact transpose (float64)."""
    ring_values = [((i * 2654435761) % 1000 - 500) / 512 for i in range(401)]
    layers = [((16, 4, 3, 3), math.sqrt(4608 / (16 * 9))), ((70, 5), math.sqrt(4608 / 70)), ((33,), 0.5)]
    rows = spec_v2.expand_float32(ring_values, layers, seed=9)
    ring = torch.tensor(ring_values, dtype=torch.float32)
    start = 0
    for position, ((shape, m), row) in enumerate(zip(layers, rows, strict=True)):
        slot = LayerSlot(position, shape, start, m, seed=9, version=2)
        w = generate_layer(ring, slot)
        assert torch.equal(w.reshape(-1).view(torch.int32), torch.tensor(row, dtype=torch.float32).view(torch.int32))
        # dL/dring of L = sum(g * W) is sum over j of g_j * m * s_j at ring index idx_j
        g = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(position))
        ours = torch.zeros(len(ring_values), dtype=torch.float64)
        fold_window(ours, window_grad(g, slot).double(), slot.start)
        idx, signs = spec_v2.layer_indices(slot.numel, start, len(ring_values), 9, position)
        want = torch.zeros(len(ring_values), dtype=torch.float64)
        mf = spec_v1.f32(m)
        for j, (i, s) in enumerate(zip(idx, signs, strict=True)):
            want[i] += spec_v1.f32(float(g.reshape(-1)[j]) * mf) * s
        torch.testing.assert_close(ours, want, rtol=1e-6, atol=1e-6)
        start += slot.numel


def test_versions_differ_and_unknown_ones_are_refused():
    a = layer_indices(LayerSlot(1, (500,), 0, 1.0, version=1), 97)[0]
    b = layer_indices(LayerSlot(1, (500,), 0, 1.0, version=2), 97)[0]
    assert not torch.equal(a, b)
    with pytest.raises(ValueError, match="unknown RPG generator_version 3"):
        LayerSlot(1, (500,), 0, 1.0, version=3)
