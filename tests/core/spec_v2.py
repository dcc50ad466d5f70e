"""Generator version 2 re-implemented from its *specification text* only: plain Python ints.

Source: the "Specification of generator version 2" paragraph of the module docstring of
``src/rpg_hf/core/construction.py`` (its text, not its code) and README "What is pinned".  No torch,
no numpy, no import of rpg_hf.  Version 2 is defined in terms of version 1's sub-keys, ``hash32``,
window offsets and keyed bijection, so those are taken from :mod:`spec_v1` (itself written from the
version-1 text); everything block-specific is written here.

The text, restated (B = 32):

* ``n_b = floor(n / B)`` full blocks; weight ``j`` is lane ``u = j mod B`` of block ``i = floor(j / B)``.
* ``π(j) = B · π1(i) + u`` for ``j < n_b · B``, ``π1`` = version 1's bijection on ``[0, n_b)`` with the
  same ``k_0..k_3`` (same grid, same cycle walking); ``π(j) = j`` on the tail ``j >= n_b · B``.
  ``π⁻¹(k) = B · π1⁻¹(floor(k / B)) + k mod B`` on the full blocks, identity on the tail.
* ``s(j) = -1`` if ``(hash32(i, k_4) >> u) & 1`` else ``+1``; the tail's block index is ``n_b``.
* ``permute=False``: π is the identity; ``sign_flip=False``: every sign is ``+1``.
* ``W_l[j] = m_l · s_l(j) · ring[(o_l + π_l(j)) mod N]``, windows ``o_l`` laid end to end (as in version 1).

When ``n_b == 0`` (n < 32) there is no full block and version 1's π (defined for ``n >= 1`` only) is
never evaluated: every position is tail.  When ``n_b == 1`` version 1's π on ``[0, 1)`` is the
identity (grid a = b = 1).
"""

from __future__ import annotations

import math

from spec_v1 import Permutation as PermutationV1
from spec_v1 import f32, hash32, sub_keys

B = 32


def full_blocks(n: int) -> int:
    """``n_b = floor(n / B)``."""
    return n // B


class Permutation:
    """Version 2's π on ``[0, n)``: full blocks of B lanes moved by version 1's π on ``[0, n_b)``, tail fixed.

    ``keys`` are the five sub-keys of :func:`spec_v1.sub_keys` (only ``k_0..k_3`` are used here).
    """

    def __init__(self, n: int, keys: list[int]):
        if n < 1:
            raise ValueError(f"a layer holds at least one weight, got n = {n}")
        self.n = n
        self.n_b = full_blocks(n)
        self.pi1 = PermutationV1(self.n_b, keys) if self.n_b > 0 else None

    def _check(self, j: int) -> None:
        if not 0 <= j < self.n:
            raise IndexError(f"position {j} outside [0, {self.n})")

    def __call__(self, j: int) -> int:
        self._check(j)
        i, u = j // B, j % B
        if i >= self.n_b:  # tail (fewer than B positions): in place
            return j
        return B * self.pi1(i) + u

    def inverse(self, k: int) -> int:
        self._check(k)
        i, u = k // B, k % B
        if i >= self.n_b:
            return k
        return B * self.pi1.inverse(i) + u

    def block_images(self) -> list[int]:
        """``[π1(0), ..., π1(n_b - 1)]`` (one Feistel evaluation per block)."""
        return [self.pi1(i) for i in range(self.n_b)]


def sign(j: int, keys: list[int]) -> int:
    """``s(j) = -1`` if bit ``j mod B`` of ``hash32(floor(j / B), k_4)`` is set, else ``+1``."""
    word = hash32(j // B, keys[4])
    return -1 if (word >> (j % B)) & 1 else 1


def layer_indices(n: int, start: int, ring_size: int, seed: int, position: int,
                  permute: bool = True, sign_flip: bool = True) -> tuple[list[int], list[int]]:
    """Ring index ``(o_l + π_l(j)) mod N`` and sign ``s_l(j)`` of every weight j of one layer.

    Evaluated block by block (the spec's point: one Feistel call and one hash per 32 weights); the
    per-position :class:`Permutation` / :func:`sign` give the same values and are checked against this.
    """
    keys = sub_keys(seed, position)
    n_b = full_blocks(n)
    if permute:
        images = Permutation(n, keys).block_images()
        window = [B * images[i] + u for i in range(n_b) for u in range(B)]
    else:
        window = list(range(n_b * B))
    window += range(n_b * B, n)  # tail: in place
    idx = [(start + k) % ring_size for k in window]
    if sign_flip:
        signs = []
        for i in range(n_b + (1 if n % B else 0)):
            word = hash32(i, keys[4])
            lanes = min(B, n - i * B)
            signs += [-1 if (word >> u) & 1 else 1 for u in range(lanes)]
    else:
        signs = [1] * n
    return idx, signs


def expand_float32(ring: list[float], layers: list[tuple[tuple[int, ...], float]], seed: int) -> list[list[float]]:
    """Every generated weight (flattened, float32 values) of ``layers`` = [(shape, multiplier)] on one ring.

    Same float32 evaluation as :func:`spec_v1.expand_float32`: m rounded to float32, ``m · r`` exact in
    a double and rounded once to float32, the sign applied exactly.
    """
    out, start, n_ring = [], 0, len(ring)
    for position, (shape, multiplier) in enumerate(layers):
        n = math.prod(shape)
        idx, signs = layer_indices(n, start, n_ring, seed, position)
        m = f32(multiplier)
        out.append([s * f32(m * ring[i]) for i, s in zip(idx, signs, strict=True)])
        start += n
    return out
