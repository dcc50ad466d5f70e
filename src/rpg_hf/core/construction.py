"""The pinned seeded construction: per-layer permutations and signs from pure integer arithmetic.

A ring-only checkpoint stores a seed, never index tables, so everything here must give the same
integers on every machine, in every torch version and inside any GPU kernel.  Nothing in this
module touches a random number generator: keys come from SplitMix64 on Python integers, and the
per-element work is 32-bit hashing and modular additions that are written so that every product
stays below 2**63 in int64 tensors (or wraps identically in uint32 kernels).

Specification of generator version 1 (a kernel re-implementing it must match bit for bit):

* ``layer_key(seed, l) = mix64(mix64(seed mod 2**64) XOR mix64(l + 1))`` with ``mix64`` the
  SplitMix64 finaliser (step 0x9E3779B97F4A7C15, then the two multiply-xorshift rounds);
  sub-keys ``k_i = mix64(layer_key + (i + 1) * 0x9E3779B97F4A7C15 mod 2**64) & 0xFFFFFFFF``,
  i = 0..3 for the Feistel rounds and i = 4 for the signs.
* ``hash32(v, k)``: ``v = v XOR k``; ``v ^= v >> 15; v = v * 0x2C1B3C6D mod 2**32;
  v ^= v >> 12; v = v * 0x297A2D39 mod 2**32; v ^= v >> 15`` (both multipliers < 2**31).
* ``π`` on ``[0, n)``: ``b = ceil(sqrt(n))``, ``a = ceil(n / b)`` (so ``a * b >= n`` and the excess
  is below ``b``); ``j = x * b + y``.  Four rounds: even ``r``: ``x = (x + hash32(y, k_r) mod a) mod a``,
  odd ``r``: ``y = (y + hash32(x, k_r) mod b) mod b``; ``p = x * b + y``.  Values ``p >= n`` walk
  the cycle (re-apply the rounds) until they land in ``[0, n)`` — a bijection on ``[0, n)``
  that is evaluated at any ``j`` on its own and inverted by running the rounds backwards.
* sign ``s(j) = -1`` if ``hash32(j, k_4) >> 31`` else ``+1``.

The round functions depend on one half only, so an implementation may tabulate them
(``a + b`` values per round, about ``2 sqrt(n)``) and gather; this module does.

Specification of generator version 2 (``GENERATOR_VERSION``, the default for new models; version 1 stays supported
for loading and by choice).  Keys, ``hash32``, the window offsets and ``W_l[j] = m_l · s_l(j) ·
ring[(o_l + π_l(j)) mod N]`` are those of version 1; π and s work on **blocks of B = 32
consecutive positions** instead of single weights, so that generation reads the ring in runs of 32
contiguous entries and hashes once per block (ROAST, ICML 2023; ROBE, MLSys 2022):

* ``n_b = floor(n / B)`` full blocks; position ``j`` is in block ``i = floor(j / B)`` at lane
  ``u = j mod B``.
* ``π(j) = B · π1(i) + u`` for ``j < n_b · B``, with ``π1`` version 1's keyed bijection on
  ``[0, n_b)`` (same ``k_0..k_3``, same grid, same cycle walking); the tail ``j >= n_b · B`` (fewer
  than B positions) stays in place: ``π(j) = j``.  A bijection on ``[0, n)``, random access in
  both directions (``π⁻¹(k) = B · π1⁻¹(floor(k / B)) + k mod B`` on the full blocks).
* sign ``s(j) = -1`` if bit ``u`` of ``hash32(i, k_4)`` is set (``(hash32(i, k_4) >> u) & 1``),
  else ``+1`` — the tail's block index is ``n_b`` like any other.
* ``permute=False`` makes π the identity and ``sign_flip=False`` every sign ``+1``, as in version 1.

Every ring entry is still used ⌊T/N⌋ or ⌈T/N⌉ times (the windows and their bijections are as before).

Every ring-only checkpoint carries this file verbatim as ``construction.py``, for its
``trust_remote_code`` loader (see :mod:`rpg_hf.hf.remote_code`): so it imports torch and the standard
library only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

GENERATOR_VERSION = 2
SUPPORTED_GENERATOR_VERSIONS = (1, 2)
BLOCK = 32  # version 2: positions moved together, and signs taken from one hash

MASK32 = 0xFFFFFFFF
MASK64 = 0xFFFFFFFFFFFFFFFF
GOLDEN64 = 0x9E3779B97F4A7C15
HASH_MUL1 = 0x2C1B3C6D
HASH_MUL2 = 0x297A2D39
NUM_ROUNDS = 4
MAX_LAYER_SIZE = 2**32 - 1


def check_generator_version(version: int) -> None:
    """Refuse a checkpoint written by a construction this code does not implement."""
    if version not in SUPPORTED_GENERATOR_VERSIONS:
        raise ValueError(
            f"unknown RPG generator_version {version!r}: this rpg_hf implements "
            f"{list(SUPPORTED_GENERATOR_VERSIONS)}; expanding with another construction would give "
            "different weights, so upgrade rpg_hf to load this checkpoint"
        )


def mix64(z: int) -> int:
    """SplitMix64 output function on a Python int (exact 64-bit arithmetic)."""
    z = (z + GOLDEN64) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


@dataclass(frozen=True)
class LayerKeys:
    """The 32-bit sub-keys of one generated layer: four Feistel rounds and the sign stream."""

    rounds: tuple[int, int, int, int]
    sign: int

    @classmethod
    def derive(cls, seed: int, position: int) -> LayerKeys:
        if position < 0:
            raise ValueError(f"layer position must be >= 0, got {position}")
        key = mix64(mix64(seed & MASK64) ^ mix64(position + 1))
        sub = [mix64((key + (i + 1) * GOLDEN64) & MASK64) & MASK32 for i in range(NUM_ROUNDS + 1)]
        return cls(rounds=tuple(sub[:NUM_ROUNDS]), sign=sub[NUM_ROUNDS])  # type: ignore[arg-type]


def hash32(v: torch.Tensor, key: int) -> torch.Tensor:
    """Keyed 32-bit integer hash of an int64 tensor holding values in [0, 2**32)."""
    v = v ^ key
    v = v ^ (v >> 15)
    v = (v * HASH_MUL1) & MASK32
    v = v ^ (v >> 12)
    v = (v * HASH_MUL2) & MASK32
    return v ^ (v >> 15)


def grid_shape(n: int) -> tuple[int, int]:
    """(a, b) with a * b >= n and a * b - n < b: the Feistel domain for a layer of n weights."""
    if not 1 <= n <= MAX_LAYER_SIZE:
        raise ValueError(f"a generated tensor must hold 1..{MAX_LAYER_SIZE} values, got {n}")
    b = math.isqrt(n - 1) + 1 if n > 1 else 1
    a = -(-n // b)
    return a, b


class Permutation:
    """The keyed bijection π on [0, n), random access in both directions.

    The round tables are built once per instance (about 2·sqrt(n) int64 values), so an
    instance is a bounded temporary; the index tensors it returns are the caller's to drop.
    """

    def __init__(self, n: int, keys: LayerKeys, device: torch.device | str = "cpu"):
        self.n = n
        self.a, self.b = grid_shape(n)
        self.device = torch.device(device)
        xs = torch.arange(self.a, dtype=torch.int64, device=self.device)
        ys = torch.arange(self.b, dtype=torch.int64, device=self.device)
        # Even rounds shift x by a function of y, odd rounds shift y by a function of x.
        self.tables = [
            hash32(ys, k) % self.a if r % 2 == 0 else hash32(xs, k) % self.b
            for r, k in enumerate(keys.rounds)
        ]

    def _rounds(self, p: torch.Tensor, inverse: bool) -> torch.Tensor:
        x, y = p // self.b, p % self.b
        order = range(NUM_ROUNDS - 1, -1, -1) if inverse else range(NUM_ROUNDS)
        sign = -1 if inverse else 1
        for r in order:
            if r % 2 == 0:
                x = (x + sign * self.tables[r][y]) % self.a
            else:
                y = (y + sign * self.tables[r][x]) % self.b
        return x * self.b + y

    def _walk(self, j: torch.Tensor, inverse: bool) -> torch.Tensor:
        p = self._rounds(j, inverse)
        outside = (p >= self.n).nonzero().squeeze(1)
        while outside.numel():  # cycle walking: a vanishing fraction (< 1/a) of the values
            q = self._rounds(p[outside], inverse)
            p[outside] = q
            outside = outside[q >= self.n]
        return p

    def forward(self, j: torch.Tensor) -> torch.Tensor:
        """π(j) for an int64 tensor of positions in [0, n)."""
        return self._walk(j, inverse=False)

    def inverse(self, k: torch.Tensor) -> torch.Tensor:
        """π⁻¹(k) for an int64 tensor of window positions in [0, n)."""
        return self._walk(k, inverse=True)


class BlockPermutation:
    """Version 2's π on [0, n): whole blocks of :data:`BLOCK` positions moved by version 1's π.

    Index tensors are evaluated one Feistel call per distinct block (consecutive positions share
    their block), so the reference costs about 1/BLOCK of version 1's rounds.
    """

    def __init__(self, n: int, keys: LayerKeys, device: torch.device | str = "cpu"):
        self.n = n
        self.blocks = n // BLOCK
        self.perm = Permutation(self.blocks, keys, device) if self.blocks > 1 else None

    def _map(self, j: torch.Tensor, inverse: bool) -> torch.Tensor:
        if self.perm is None:
            return j.clone()
        block, lane = j // BLOCK, j % BLOCK
        full = block < self.blocks
        distinct, where = torch.unique_consecutive(block[full], return_inverse=True)
        moved = (self.perm.inverse if inverse else self.perm.forward)(distinct)
        out = j.clone()
        out[full] = moved[where] * BLOCK + lane[full]
        return out

    def forward(self, j: torch.Tensor) -> torch.Tensor:
        """π(j) for an int64 tensor of positions in [0, n)."""
        return self._map(j, inverse=False)

    def inverse(self, k: torch.Tensor) -> torch.Tensor:
        """π⁻¹(k) for an int64 tensor of window positions in [0, n)."""
        return self._map(k, inverse=True)


def layer_permutation(n: int, keys: LayerKeys, version: int, device: torch.device | str = "cpu"):
    """π of a layer of ``n`` weights under construction ``version`` (an object with forward/inverse)."""
    check_generator_version(version)
    return Permutation(n, keys, device) if version == 1 else BlockPermutation(n, keys, device)


def negative_signs(j: torch.Tensor, keys: LayerKeys, version: int = 1) -> torch.Tensor:
    """Boolean mask of the positions whose generated weight is negated (s(j) = -1)."""
    if version == 1:
        return (hash32(j, keys.sign) >> 31).bool()
    check_generator_version(version)
    return ((hash32(j // BLOCK, keys.sign) >> (j % BLOCK)) & 1).bool()
