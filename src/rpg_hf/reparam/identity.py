"""The construction's identity: what a state dict must have been written by to load into a model.

A ring's values mean something only together with the construction that unpacks them: the
generator version, the seed, the permutation / sign switches, the ring sizes and the generated-layer
layout.  A ``save_pretrained`` folder carries all of that in ``config.json``; a plain state dict
(timm ``--resume`` checkpoints, EMA copies, Lightning, ``safetensors.torch.save_model``, Accelerate's
``save_state``) did not, so loading one into a model built another way silently gave other weights.
The ring holder therefore keeps the identity as a small persistent int64 buffer,
``rpg.construction``, which every state dict carries, and checks it on load.

Layout of the buffer (format 1): ``[1, generator_version, seed >> 32, seed & 0xFFFFFFFF, permute,
sign_flip, layout fingerprint, number of rings, *ring sizes]``.  The fingerprint is 48 bits of the
SHA-256 of the generated layers' shapes, rings and float32 multipliers in their recorded order
(not their names: HF ViT's module names changed between transformers 4 and 5 and the construction
did not).  Ring-only checkpoint files leave the buffer out: ``config.json`` says the same.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Sequence

import torch

from rpg_hf.core.reference import LayerSlot

FORMAT = 1
KEY = "construction"  # the buffer's name on the ring holder: state-dict key "<prefix>rpg.construction"
_HEAD = ("format", "generator_version", "seed_hi", "seed_lo", "permute", "sign_flip", "layout_fingerprint")


def layout_fingerprint(slots: Sequence[LayerSlot], rings: Sequence[int]) -> int:
    """48 bits identifying the generated layers' shapes, rings and multipliers, in order."""
    rows = [[list(s.shape), r, struct.unpack("<I", struct.pack("<f", s.multiplier))[0]] for s, r in zip(slots, rings,
                                                                                                     strict=True)]
    return int.from_bytes(hashlib.sha256(json.dumps(rows).encode()).digest()[:6], "big")


def identity_tensor(version: int, seed: int, permute: bool, sign_flip: bool, fingerprint: int,
                    ring_sizes: Sequence[int]) -> torch.Tensor:
    seed &= 0xFFFFFFFFFFFFFFFF
    values = [FORMAT, version, seed >> 32, seed & 0xFFFFFFFF, int(permute), int(sign_flip), fingerprint,
              len(ring_sizes), *ring_sizes]
    return torch.tensor(values, dtype=torch.int64, device="cpu")


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
        return (f"the state dict's rpg.{KEY} is not an RPG construction identity this rpg_hf can read "
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
