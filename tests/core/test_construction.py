"""The pinned construction: golden vectors, bijectivity, inverse, balance of ring use.

Golden values are *derived*: ``spec_v1`` re-implements generator version 1 from its specification
text (the docstring of src/rpg_hf/core/construction.py, DESIGN.md §2) in plain Python ints, and the package must equal it
element for element.  The literal vectors below are kept as well, so a change of the spec module
itself cannot go unnoticed either.
"""

from __future__ import annotations

import pytest
import spec_v1
import torch

from rpg_hf.core.construction import (
    GENERATOR_VERSION,
    LayerKeys,
    Permutation,
    check_generator_version,
    grid_shape,
    hash32,
    mix64,
)
from rpg_hf.core.reference import LayerSlot, layer_indices

RING = 1000
# (position, layer size, unwrapped start): one layer smaller than the ring, one larger, one not
# a power of two -- laid end to end on a ring of 1000 entries, seed 0.
GOLDEN = {
    0: (300, 0, [212, 255, 55, 36, 200, 129, 141, 42], [1, -1, -1, 1, -1, 1, 1, -1]),
    1: (5000, 300, [998, 34, 625, 348, 567, 680, 351, 412], [-1, 1, -1, 1, -1, 1, 1, 1]),
    2: (777, 5300, [18, 823, 886, 973, 399, 873, 919, 942], [-1, 1, 1, -1, -1, 1, -1, -1]),
}


def test_generator_version_is_pinned():
    """New models use version 2; version 1 (this file's golden vectors) stays supported forever."""
    assert GENERATOR_VERSION == 2
    check_generator_version(1)
    check_generator_version(2)
    with pytest.raises(ValueError, match="unknown RPG generator_version 7"):
        check_generator_version(7)


def test_mix64_and_hash32_golden():
    assert mix64(0) == 0xE220A8397B1DCDAF  # SplitMix64's first output for state 0 (published value)
    assert spec_v1.splitmix64(0) == 0xE220A8397B1DCDAF
    for z in (1, 2**32 - 1, 2**63, 2**64 - 1, 0x0123456789ABCDEF, 0x9E3779B97F4A7C15):
        assert mix64(z) == spec_v1.splitmix64(z), hex(z)
    v = hash32(torch.arange(4, dtype=torch.int64), 0x12345678)
    assert v.tolist() == [2838851077, 1587700696, 920116665, 593785079]
    assert v.tolist() == [spec_v1.hash32(j, 0x12345678) for j in range(4)]
    values = [0, 1, 2, 12345, 2**31 - 1, 2**31, 2**32 - 2, 2**32 - 1]
    for key in (0, 1, 0x9E3779B9, 0xFFFFFFFF):
        ours = hash32(torch.tensor(values, dtype=torch.int64), key).tolist()
        assert ours == [spec_v1.hash32(x, key) for x in values], hex(key)
        assert all(0 <= h < 2**32 for h in ours)


@pytest.mark.parametrize("seed", [0, 1, 12345, 2**63 + 7, 2**64 + 12345])
def test_layer_keys_match_the_spec(seed):
    for position in (0, 1, 2, 17, 1000):
        keys = LayerKeys.derive(seed, position)
        assert [*keys.rounds, keys.sign] == spec_v1.sub_keys(seed, position), (seed, position)
    # the seed enters mod 2**64
    assert LayerKeys.derive(2**64 + 12345, 3) == LayerKeys.derive(12345, 3)


def test_golden_vectors_are_the_specs():
    """The recorded first indices/signs are what the specification text gives (not just the code)."""
    for position, (n, start, first_idx, first_sign) in GOLDEN.items():
        idx, signs = spec_v1.layer_indices(n, start, RING, seed=0, position=position)
        assert idx[:8] == first_idx and signs[:8] == first_sign, position


@pytest.mark.parametrize("position", sorted(GOLDEN))
def test_golden_indices_and_signs(position):
    n, start, first_idx, first_sign = GOLDEN[position]
    slot = LayerSlot(position, (n,), start, 1.0, seed=0)
    idx, neg = layer_indices(slot, RING)
    assert idx[:8].tolist() == first_idx
    assert (1 - 2 * neg[:8].int()).tolist() == first_sign
    # every index and sign of the layer, not only the recorded head
    spec_idx, spec_sign = spec_v1.layer_indices(n, start, RING, seed=0, position=position)
    assert idx.tolist() == spec_idx
    assert (1 - 2 * neg.int()).tolist() == spec_sign


# n: 1x1 grid, a 1-row grid, squares, one above a square (large excess a*b - n: cycle walking),
# 4097 = 65*64 - 63 (63 of 4160 grid cells walk), primes
@pytest.mark.parametrize("n", [1, 2, 3, 5, 9, 10, 17, 101, 4097, 10_007])
def test_permutation_and_inverse_match_the_spec(n):
    seed, position = 5, n % 7
    ref = spec_v1.Permutation(n, spec_v1.sub_keys(seed, position))
    assert grid_shape(n) == (ref.a, ref.b)
    perm = Permutation(n, LayerKeys.derive(seed, position))
    j = torch.arange(n)
    assert perm.forward(j).tolist() == [ref(x) for x in range(n)]
    assert perm.inverse(j).tolist() == [ref.inverse(x) for x in range(n)]


@pytest.mark.parametrize("permute,sign_flip", [(False, True), (True, False), (False, False)])
def test_switches_match_the_spec(permute, sign_flip):
    n, start, ring = 700, 123, 97
    slot = LayerSlot(4, (n,), start, 1.0, seed=2, permute=permute, sign_flip=sign_flip)
    idx, neg = layer_indices(slot, ring)
    spec_idx, spec_sign = spec_v1.layer_indices(n, start, ring, 2, 4, permute=permute, sign_flip=sign_flip)
    assert idx.tolist() == spec_idx and (1 - 2 * neg.int()).tolist() == spec_sign


def test_keys_depend_on_seed_and_position():
    k = {LayerKeys.derive(s, p) for s in (0, 1) for p in (0, 1, 2)}
    assert len(k) == 6


@pytest.mark.parametrize("n", [1, 2, 3, 7, 9, 16, 17, 100, 255, 256, 1000, 4097, 65_537])
def test_bijection_exhaustive(n):
    perm = Permutation(n, LayerKeys.derive(3, n))
    j = torch.arange(n)
    p = perm.forward(j)
    assert torch.equal(torch.sort(p).values, j)
    assert torch.equal(perm.inverse(p), j)
    assert torch.equal(perm.forward(perm.inverse(j)), j)


def test_bijection_large_sampled():
    n = 1_000_003  # prime, > 10**6: exercises cycle walking
    perm = Permutation(n, LayerKeys.derive(0, 5))
    p = perm.forward(torch.arange(n))
    assert torch.equal(torch.bincount(p, minlength=n), torch.ones(n, dtype=torch.int64))
    sample = torch.randint(0, n, (10_000,), generator=torch.Generator().manual_seed(0))
    assert torch.equal(perm.inverse(perm.forward(sample)), sample)


def test_random_access_matches_full_evaluation():
    n = 50_000
    perm = Permutation(n, LayerKeys.derive(1, 2))
    full = perm.forward(torch.arange(n))
    j = torch.tensor([0, 17, 49_999, 31_337])
    assert torch.equal(perm.forward(j), full[j])


def test_permutation_is_not_trivial():
    n = 10_000
    p = Permutation(n, LayerKeys.derive(0, 0)).forward(torch.arange(n))
    assert (p == torch.arange(n)).float().mean() < 0.01
    # neighbours land far apart: the mean jump is a sizeable fraction of n
    assert (p[1:] - p[:-1]).abs().float().mean() > n / 10


def test_signs_are_balanced():
    slot = LayerSlot(0, (100_000,), 0, 1.0)
    _, neg = layer_indices(slot, 10)
    assert 0.48 < neg.float().mean() < 0.52


def test_grid_shape_bounds():
    for n in [1, 2, 5, 10, 99, 100, 101, 12345, 2**20 + 1]:
        a, b = grid_shape(n)
        assert a * b >= n and a * b - n < b
    with pytest.raises(ValueError, match="1..4294967295"):
        grid_shape(0)
    with pytest.raises(ValueError):
        grid_shape(2**32)


def test_every_ring_entry_used_floor_or_ceil_times():
    ring = 997
    shapes = [(64, 3, 3, 3), (128, 64, 1, 1), (10, 7), (333,), (5, 5)]
    start, counts = 0, torch.zeros(ring, dtype=torch.int64)
    for pos, shape in enumerate(shapes):
        slot = LayerSlot(pos, shape, start, 1.0, seed=11)
        idx, _ = layer_indices(slot, ring)
        counts += torch.bincount(idx, minlength=ring)
        start += slot.numel
    total = start
    assert int(counts.sum()) == total
    assert set(counts.unique().tolist()) <= {total // ring, -(-total // ring)}
