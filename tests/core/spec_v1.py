"""Generator version 1 re-implemented from its *specification text* only: plain Python ints.

Written from the specification in the docstring of ``src/rpg_hf/core/construction.py`` and DESIGN.md §1-2
(``W_l[j] = m_l · s_l(j) · ring[(o_l + π_l(j)) mod N]``, windows laid end to end around the ring),
not from the package's code: no torch, no numpy, no import of rpg_hf.  The tests compare the
package against this module, so golden vectors are *derived* here, not recorded from the code.

SplitMix64 is taken from its public definition (Steele, Lea & Flood 2014; Vigna's
``splitmix64.c``): ``z = (state += 0x9E3779B97F4A7C15); z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9;
z = (z ^ (z >> 27)) * 0x94D049BB133111EB; return z ^ (z >> 31)`` — the docstring names it but does
not spell out the shift amounts and multipliers.
"""

from __future__ import annotations

import math
import struct

TWO32 = 1 << 32
TWO64 = 1 << 64
GAMMA = 0x9E3779B97F4A7C15


def splitmix64(state: int) -> int:
    """SplitMix64's output for ``state`` (step by the golden gamma, then the two mixing rounds)."""
    z = (state + GAMMA) % TWO64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % TWO64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % TWO64
    return z ^ (z >> 31)


def layer_key(seed: int, position: int) -> int:
    """``mix64(mix64(seed mod 2**64) XOR mix64(l + 1))``."""
    return splitmix64(splitmix64(seed % TWO64) ^ splitmix64(position + 1))


def sub_keys(seed: int, position: int) -> list[int]:
    """``k_i = mix64(layer_key + (i + 1) · 0x9E3779B97F4A7C15 mod 2**64) & 0xFFFFFFFF``, i = 0..4."""
    key = layer_key(seed, position)
    return [splitmix64((key + (i + 1) * GAMMA) % TWO64) % TWO32 for i in range(5)]


def hash32(v: int, k: int) -> int:
    v = v ^ k
    v = v ^ (v >> 15)
    v = (v * 0x2C1B3C6D) % TWO32
    v = v ^ (v >> 12)
    v = (v * 0x297A2D39) % TWO32
    return v ^ (v >> 15)


def grid(n: int) -> tuple[int, int]:
    """``b = ceil(sqrt(n))``, ``a = ceil(n / b)``."""
    b = math.isqrt(n)
    if b * b < n:
        b += 1
    return -(-n // b), b


class Permutation:
    """π on [0, n): four alternating Feistel rounds on ``j = x·b + y``, cycle walking outside [0, n)."""

    def __init__(self, n: int, keys: list[int]):
        self.n = n
        self.a, self.b = grid(n)
        # the round functions depend on one half only: tabulate them (the spec allows it)
        self.tables = [
            [hash32(y, keys[r]) % self.a for y in range(self.b)] if r % 2 == 0
            else [hash32(x, keys[r]) % self.b for x in range(self.a)]
            for r in range(4)
        ]

    def _rounds(self, p: int, backwards: bool) -> int:
        a, b, t = self.a, self.b, self.tables
        x, y = divmod(p, b)
        for r in ((3, 2, 1, 0) if backwards else (0, 1, 2, 3)):
            if r % 2 == 0:
                x = (x - t[r][y]) % a if backwards else (x + t[r][y]) % a
            else:
                y = (y - t[r][x]) % b if backwards else (y + t[r][x]) % b
        return x * b + y

    def __call__(self, j: int) -> int:
        p = self._rounds(j, False)
        while p >= self.n:
            p = self._rounds(p, False)
        return p

    def inverse(self, k: int) -> int:
        p = self._rounds(k, True)
        while p >= self.n:
            p = self._rounds(p, True)
        return p


def sign(j: int, keys: list[int]) -> int:
    """``s(j) = -1`` if the top bit of ``hash32(j, k_4)`` is set, else ``+1``."""
    return -1 if hash32(j, keys[4]) >> 31 else 1


def layer_indices(n: int, start: int, ring_size: int, seed: int, position: int,
                  permute: bool = True, sign_flip: bool = True) -> tuple[list[int], list[int]]:
    """Ring index ``(o_l + π_l(j)) mod N`` and sign ``s_l(j)`` of every weight j of one layer."""
    keys = sub_keys(seed, position)
    perm = Permutation(n, keys) if permute else None
    idx = [(start + (perm(j) if perm else j)) % ring_size for j in range(n)]
    signs = [sign(j, keys) if sign_flip else 1 for j in range(n)]
    return idx, signs


def f32(x: float) -> float:
    """Round a Python float (double) to the nearest float32."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def conv_multiplier(out_channels: int, kernel: tuple[int, ...], reference_fan: int = 512 * 3 * 3) -> float:
    """DESIGN §1: ``m_l = sqrt(F_ref / fan_out_l)``, fan_out = out_channels · prod(kernel)."""
    return math.sqrt(reference_fan / (out_channels * math.prod(kernel)))


def expand_float32(ring: list[float], layers: list[tuple[tuple[int, ...], float]], seed: int) -> list[list[float]]:
    """Every generated weight (flattened, float32 values) of ``layers`` = [(shape, multiplier)] on one ring.

    Float32 evaluation of ``m · s · r``: m rounded to float32, the product of two float32 values is
    exact in a double and rounded once to float32, and the sign is applied exactly.
    """
    out, start, n_ring = [], 0, len(ring)
    for position, (shape, multiplier) in enumerate(layers):
        n = math.prod(shape)
        idx, signs = layer_indices(n, start, n_ring, seed, position)
        m = f32(multiplier)
        out.append([s * f32(m * ring[i]) for i, s in zip(idx, signs, strict=True)])
        start += n
    return out
