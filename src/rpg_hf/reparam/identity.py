"""The construction's identity: what a state dict must have been written by to load into a model.

A ring's values mean something only together with the construction that unpacks them: the
generator version, the seed, the permutation / sign switches, the ring sizes and the generated-layer
layout.  A state dict that did not say so (timm ``--resume`` checkpoints, EMA copies, Lightning,
``safetensors.torch.save_model``, Accelerate's ``save_state``, a Trainer resuming from ``checkpoint-N``,
which reads ``model.safetensors`` without ``config.json``) loaded silently into a model built another
way and gave other weights.  The ring holder (rpg_hf's ``RPGGenerator`` and the trust_remote_code
``RPGRings``, both :class:`CarriesConstruction`) therefore keeps the identity as a small persistent
int64 buffer, ``rpg.construction``, which every state dict carries — ring-only checkpoint files
included — and checks it on load.  A state dict without one (written before they carried it) loads
as it always did: into a model built the way it was.

The value saved is computed from the construction, never read back from the buffer: timm's
``ModelEma`` / ``ModelEmaV2`` blend every state-dict tensor in place in floating point and SWA's
``AveragedModel(use_buffers=True)`` every buffer, which would round the 48-bit fingerprint.  A fresh
CPU tensor per ``state_dict()`` keeps whatever they write off the saved value (and needs no device copy).

Layout of the buffer (format 1): ``[1, generator_version, seed >> 32, seed & 0xFFFFFFFF, permute,
sign_flip, layout fingerprint, number of rings, *ring sizes]``.  The fingerprint is 48 bits of the
SHA-256 of the generated layers' shapes, rings and float32 multipliers in their recorded order
(not their names: HF ViT's module names changed between transformers 4 and 5 and the construction
did not).

This module imports torch and the standard library only: rpg_hf ships it verbatim in every ring-only
checkpoint (``identity.py``, beside ``construction.py`` and ``reference.py``), so the trust_remote_code
classes carry, write and check the same identity.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterable, Sequence

import torch
from torch import nn

FORMAT = 1
KEY = "construction"  # the buffer's name on the ring holder: state-dict key "<prefix>rpg.construction"
_HEAD = ("format", "generator_version", "seed_hi", "seed_lo", "permute", "sign_flip", "layout_fingerprint")


def layout_fingerprint(rows: Iterable[tuple[Sequence[int], int, float]]) -> int:
    """48 bits identifying the generated layers' ``(shape, ring, multiplier)`` rows, in order."""
    data = [[[int(s) for s in shape], int(ring), struct.unpack("<I", struct.pack("<f", float(m)))[0]]
            for shape, ring, m in rows]
    return int.from_bytes(hashlib.sha256(json.dumps(data).encode()).digest()[:6], "big")


def identity_values(version: int, seed: int, permute: bool, sign_flip: bool,
                    rows: Iterable[tuple[Sequence[int], int, float]], ring_sizes: Sequence[int]) -> tuple[int, ...]:
    """The identity of a construction (see the module docstring for the layout)."""
    seed = int(seed) & 0xFFFFFFFFFFFFFFFF
    sizes = [int(s) for s in ring_sizes]
    return (FORMAT, int(version), seed >> 32, seed & 0xFFFFFFFF, int(bool(permute)), int(bool(sign_flip)),
            layout_fingerprint(rows), len(sizes), *sizes)


def config_identity(config) -> tuple[int, ...]:
    """The identity of the construction an RPG ``config.json`` records (its ``generated_layers``)."""
    rows = [(d["shape"], d["ring"], d["multiplier"]) for d in config.generated_layers]
    return identity_values(config.generator_version, config.seed, config.permute, config.sign_flip, rows,
                           config.ring_sizes)


def _decode(t: torch.Tensor) -> dict | None:
    v = [int(x) for x in t.detach().cpu().reshape(-1).tolist()]
    if len(v) < len(_HEAD) + 1 or v[0] != FORMAT or len(v) != len(_HEAD) + 1 + v[len(_HEAD)]:
        return None
    d = dict(zip(_HEAD, v, strict=False))
    return {"generator_version": d["generator_version"], "seed": (d["seed_hi"] << 32) | d["seed_lo"],
            "permute": bool(d["permute"]), "sign_flip": bool(d["sign_flip"]),
            "ring_sizes": v[len(_HEAD) + 1:], "layout_fingerprint": d["layout_fingerprint"]}


def mismatch(stored: torch.Tensor, own: torch.Tensor) -> str | None:
    """None when a state dict's identity ``stored`` is this model's ``own``; else what differs, and how to
    build a model that loads it."""
    theirs, ours = _decode(stored), _decode(own)
    if theirs is None:
        return (f"the state dict's rpg.{KEY} is not an RPG construction identity this code can read "
                f"({list(stored.reshape(-1).tolist())[:8]}...): it was written by a newer rpg_hf or altered")
    assert ours is not None
    if theirs == ours:
        return None
    spec_fields = [k for k in ("generator_version", "seed", "permute", "sign_flip") if theirs[k] != ours[k]]
    if spec_fields:
        want = ", ".join(f"{k}={theirs[k]!r}" for k in spec_fields)
        have = ", ".join(f"{k}={ours[k]!r}" for k in spec_fields)
        return (f"this state dict was written by an RPG model built with {want}; this model was built with "
                f"{have}, so its ring would generate other weights. Build the model with {want} "
                f"(RPGSpec(..., {want}), timm.create_model(..., {want}) or RPGConfig(..., {want})) to load it")
    if theirs["ring_sizes"] != ours["ring_sizes"]:
        return (f"this state dict's rings have sizes {theirs['ring_sizes']}, this model's {ours['ring_sizes']}: "
                "build the model with the dof and scope it was trained with")
    return ("this state dict comes from an RPG model whose generated layers differ from this model's (layout "
            f"fingerprint {theirs['layout_fingerprint']:012x}, this model {ours['layout_fingerprint']:012x}): "
            "another architecture or another target selection (target_types, include, exclude, exclude_stem, "
            "exclude_head, scope, reference_fan, linear_std)")


class CarriesConstruction(nn.Module):
    """A ring holder whose state dicts carry its construction's identity (buffer :data:`KEY`) and whose
    ``load_state_dict`` refuses another construction's.  Subclasses define :meth:`construction_values`
    and call :meth:`register_construction` once they know their construction."""

    def construction_values(self) -> tuple[int, ...]:
        raise NotImplementedError

    def construction_tensor(self) -> torch.Tensor:
        return torch.tensor(self.construction_values(), dtype=torch.int64, device="cpu")  # even in a meta context

    def register_construction(self) -> None:
        self.register_buffer(KEY, self.construction_tensor(), persistent=True)

    @torch.no_grad()
    def reset_construction(self) -> None:
        """Recompute the buffer (it is derived: after meta-device construction it holds nothing)."""
        buf = getattr(self, KEY)
        if not buf.is_meta:
            buf.copy_(self.construction_tensor())

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        """Save the identity computed from the construction, not the buffer's (EMA may have blended it)."""
        super()._save_to_state_dict(destination, prefix, keep_vars)
        key = prefix + KEY
        if not keep_vars and key in destination and not destination[key].is_meta:
            destination[key] = self.construction_tensor()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        """Refuse a state dict written by another construction (strict or not); one without an identity
        (written before state dicts carried it) loads as it did."""
        key = prefix + KEY
        stored = state_dict.get(key)
        if stored is not None:
            problem = mismatch(stored, self.construction_tensor())
            if problem:
                raise ValueError(f"cannot load this state dict ({key}): {problem}")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if stored is None and key in missing_keys:
            missing_keys.remove(key)
