"""The science sweep's grid and protocol: which runs exist, and the fingerprint that says a stored run
is of this protocol.

Shared by ``sweep.py`` (which trains the runs) and ``report.py`` (which reads them back), so neither
imports the other for it.  Grid vocabulary: see ``sweep.py``'s docstring.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

AUGMENTATIONS = ("none", "flip", "crop+flip")


def _counts(arch: str, width: int, in_chans: int, num_classes: int, scope: str = "global") -> dict[str, int]:
    """Parameter counts of the RPG and the plain version of a narrowed network (built on the meta device)."""
    import timm

    import rpg_hf
    from rpg_hf.train.models import narrowed_model_args

    model = timm.create_model(arch, num_classes=num_classes, device="meta", **narrowed_model_args(width, in_chans))
    plain = int(sum(p.numel() for p in model.parameters()))
    table = rpg_hf.dof_table(rpg_hf.reparameterize(model, rpg_hf.RPGSpec(dof=64, scope=scope)))
    return {"params": plain, "free_params": int(table.free_params), "generated_params": int(table.generated_params)}


def base_id(r: Mapping[str, Any]) -> str:
    """A grid point without its seed: what ``extra_seeds.runs`` names."""
    return f"{r['arch']}-{r['method']}-w{r['width']}-dof{r['dof']}"


def run_id(r: Mapping[str, Any]) -> str:
    return f"{base_id(r)}-s{r['seed']}"


def build_grid(cfg: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every run of the sweep in priority order, parameter counts resolved.

    All of seed 0 first, then each further seed of ``seeds``; then the ``extra_seeds`` (the grid
    points named in ``extra_seeds.runs`` — a third seed where two results are within a seed spread).
    """
    from rpg_hf.train.models import match_vanilla_width

    data = cfg.get("dataset") or {}
    in_chans, classes, width = int(data.get("in_chans", 1)), int(data.get("num_classes", 10)), int(cfg["width"])
    counts = {}

    def count(arch: str, scope: str = "global") -> dict[str, int]:
        if (arch, scope) not in counts:
            counts[arch, scope] = _counts(arch, width, in_chans, classes, scope)
        return counts[arch, scope]

    def rpg(arch: str, dof: int, method: str = "rpg", role: str = "rpg", **variant: Any) -> dict[str, Any]:
        c = count(arch, variant.get("scope", "global"))
        return {"arch": arch, "method": method, "role": role, "width": width, "dof": int(dof), "params": c["params"],
                "trainable_params": int(dof) + c["free_params"], "free_params": c["free_params"],
                "scope": "global", "permute": True, "sign_flip": True, "generator_version": 1, **variant}

    base: list[dict[str, Any]] = []
    for arch in cfg.get("vanilla_full") or []:
        p = count(arch)["params"]
        base.append({"arch": arch, "method": "vanilla", "role": "full", "width": width, "dof": p, "params": p,
                     "trainable_params": p})
    for block in cfg.get("rpg") or []:
        base += [rpg(block["arch"], d) for d in block["dof"]]
    eq = cfg.get("equal_dof_vanilla") or {}
    for dof in eq.get("dof", []):
        target = rpg(eq.get("rpg_arch", eq["arch"]), dof)
        w, p = match_vanilla_width(eq["arch"], target["trainable_params"], classes, in_chans)
        base.append({"arch": eq["arch"], "method": "vanilla", "role": "equal_dof", "width": w, "dof": p, "params": p,
                     "trainable_params": p, "matched_rpg": {"arch": target["arch"], "dof": int(dof),
                                                            "trainable_params": target["trainable_params"]}})
    abl = cfg.get("ablations") or {}
    for name, variant in (abl.get("variants") or {}).items():
        unknown = set(variant) - {"permute", "sign_flip", "scope"}
        if unknown:
            raise ValueError(f"ablation {name!r}: unknown field(s) {sorted(unknown)}")
        base.append(rpg(abl["arch"], abl["dof"], method=name, role="ablation", **variant))
    v2 = cfg.get("generator_v2") or {}  # the block construction against version 1's rows at the same DoFs
    base += [rpg(v2["arch"], d, method="rpg-v2", role="generator_v2", generator_version=2) for d in v2.get("dof", [])]
    extra = cfg.get("extra_seeds") or {}
    wanted = [str(x) for x in extra.get("runs") or []]
    unknown = sorted(set(wanted) - {base_id(r) for r in base})
    if unknown:
        raise ValueError(f"extra_seeds.runs: not in the grid: {unknown} (names are run ids without '-s<seed>')")
    passes = [(int(s), base) for s in cfg.get("seeds", [0, 1])]
    passes += [(int(s), [r for r in base if base_id(r) in wanted]) for s in extra.get("seeds") or []]
    runs, seen = [], set()
    for seed, points in passes:
        for r in points:
            r = dict(r, seed=seed, run_id=run_id(dict(r, seed=seed)))
            if r["run_id"] not in seen:
                seen.add(r["run_id"])
                runs.append(r)
    return runs


def protocol_of(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The training/evaluation protocol shared by every run (what the fingerprint covers)."""
    from rpg_hf.train.models import narrowed_channels

    p = {"epochs": 1, "batch_size": 128, "momentum": 0.9, "nesterov": False, "weight_decay": 1e-4,
         "warmup_epochs": 0, "augmentation": "none", "eval_batch_size": 1000, **(cfg.get("protocol") or {})}
    p.setdefault("lr", 0.1 * p["batch_size"] / 256)
    if p["augmentation"] not in AUGMENTATIONS:
        raise ValueError(f"protocol.augmentation must be one of {AUGMENTATIONS}, got {p['augmentation']!r}")
    data = {k: v for k, v in (cfg.get("dataset") or {}).items() if k != "root"}  # where files live is not protocol
    return {"dataset": data, "width": int(cfg["width"]), "channels": narrowed_channels(int(cfg["width"])), **p}


def fingerprint(protocol: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(protocol, sort_keys=True).encode()).hexdigest()[:12]
