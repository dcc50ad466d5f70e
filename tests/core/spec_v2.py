"""Generator version 2 re-implemented from its *specification text* only: plain Python ints.

Written from the "Specification of generator version 2" in the docstring of
``src/rpg_hf/core/construction.py``, not from the package's code: no torch, no numpy, no import of
rpg_hf.  Version 2 is defined in terms of version 1's keys, hash and bijection, so it builds on
:mod:`spec_v1` (itself written from the version-1 text).  The tests compare the package against
this module, so the version-2 golden vectors are *derived* here, not recorded from the code.

The text, restated: B = 32; ``n_b = floor(n / B)`` full blocks; position ``j`` is lane
``u = j mod B`` of block ``i = floor(j / B)``.  ``π(j) = B · π1(i) + u`` for ``j < n_b · B`` with
``π1`` version 1's keyed bijection on ``[0, n_b)`` (same sub-keys k_0..k_3); the tail
``j >= n_b · B`` stays in place.  ``s(j) = -1`` when bit ``u`` of ``hash32(i, k_4)`` is set (the
tail's block index is ``n_b``).  ``permute=False``: π is the identity; ``sign_flip=False``: s = +1.
"""

from __future__ import annotations

import math

import spec_v1

B = 32


class Permutation:
    """π on [0, n): whole blocks of B positions moved by version 1's π on the n_b full blocks."""

    def __init__(self, n: int, keys: list[int]):
        self.n = n
        self.blocks = n // B
        # version 1's π needs n >= 1; on a single block (or none) every bijection of [0, n_b) is the identity
        self.perm = spec_v1.Permutation(self.blocks, keys) if self.blocks >= 1 else None

    def __call__(self, j: int) -> int:
        i, u = divmod(j, B)
        return B * self.perm(i) + u if i < self.blocks else j

    def inverse(self, k: int) -> int:
        i, u = divmod(k, B)
        return B * self.perm.inverse(i) + u if i < self.blocks else k


def sign(j: int, keys: list[int]) -> int:
    """``s(j) = -1`` if bit ``j mod B`` of ``hash32(floor(j / B), k_4)`` is set, else ``+1``."""
    i, u = divmod(j, B)
    return -1 if (spec_v1.hash32(i, keys[4]) >> u) & 1 else 1


def layer_indices(n: int, start: int, ring_size: int, seed: int, position: int,
                  permute: bool = True, sign_flip: bool = True) -> tuple[list[int], list[int]]:
    """Ring index ``(o_l + π_l(j)) mod N`` and sign ``s_l(j)`` of every weight j of one layer."""
    keys = spec_v1.sub_keys(seed, position)
    perm = Permutation(n, keys) if permute else None
    idx = [(start + (perm(j) if perm else j)) % ring_size for j in range(n)]
    signs = [sign(j, keys) if sign_flip else 1 for j in range(n)]
    return idx, signs


def expand_float32(ring: list[float], layers: list[tuple[tuple[int, ...], float]], seed: int) -> list[list[float]]:
    """Every generated weight (flattened, float32 values) of ``layers`` = [(shape, multiplier)] on one ring,
    evaluated as :func:`spec_v1.expand_float32` does (m and m·r rounded to float32, the sign exact)."""
    out, start, n_ring = [], 0, len(ring)
    for position, (shape, multiplier) in enumerate(layers):
        n = math.prod(shape)
        idx, signs = layer_indices(n, start, n_ring, seed, position)
        m = spec_v1.f32(multiplier)
        out.append([s * spec_v1.f32(m * ring[i]) for i, s in zip(idx, signs, strict=True)])
        start += n
    return out
