#!/usr/bin/env python
"""The RPG science sweep: test accuracy against degrees of freedom (DoF) on Fashion-MNIST.

Why this script: the paper's claims (Wang et al., WACV 2023) are statements about *many* runs —
a log-linear DoF→accuracy law, equal-DoF comparisons against narrowed vanilla networks, and
ablations of the permutation / sign flip / ring scope.  One YAML file describes the whole grid
(``recipes/science/fashion_mnist.yaml``); this script trains every point of it with one
identical schedule, writes one JSON per finished run (so an interrupted sweep resumes where it
stopped), and turns the per-run files into ``summary.json``, a plot, a markdown table and a
results README whose claim verdicts are computed from the numbers, never typed by hand.

Run (a clean checkout, Fashion-MNIST from ``apt-get install -y dataset-fashion-mnist``)::

    accelerate launch recipes/science/sweep.py --config recipes/science/fashion_mnist.yaml

Several processes split the *runs* between them (every process trains whole runs on its own
device; nothing is all-reduced): 8 GPUs → ``accelerate launch --multi_gpu --num_processes 8``;
on a CPU-only machine the same flags start CPU workers (``--num_cpu_threads_per_process 1``).
The last process to finish writes the summary; ``--summarize-only`` rebuilds it at any time.

Grid vocabulary (see the YAML): ``rpg`` — RPG models of one architecture at several ring sizes,
some of them set to *match* a narrowed vanilla network's parameter count (trainable parameters
equal: ring + free BN/stem/head tensors = the vanilla network's parameters); ``vanilla_full`` —
the plain networks at the base width; ``equal_dof_vanilla`` — the same family narrowed
(stage widths ``(w, 2w, 4w, 8w)``); ``ablations`` — RPG variants at one DoF (permutation off,
sign flip off, both off = plain random weight sharing, local rings per stage).

Training: uint8 tensors in memory (on the device), normalised per batch, optional seeded
pad-crop/flip augmentation done on whole batches; SGD with momentum, weight decay on every
parameter (ring included, as in the reference code — the ring multipliers make the paper's
hyper-parameters transfer), per-step cosine schedule with optional linear warm-up; test top-1 on
the whole test split.  RPG runs are saved ring-only (``save_pretrained``) with a model card
carrying their result, reloaded, and the reloaded logits are checked against the trained model.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import json
import math
import os
import platform
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

DEFAULT_COMMAND = "accelerate launch recipes/science/sweep.py --config recipes/science/fashion_mnist.yaml"
PAPER = {  # the paper's numbers behind each claim (percent top-1)
    "claim1": {"rpg_deep": 78.9, "vanilla_equal": 77.5, "vanilla_deep": 79.1, "dataset": "CIFAR-100"},
    "claim3": {"rpg": 67.2, "vanilla": 70.5, "dof_fraction": 0.18, "dataset": "ImageNet"},
    "claim4": {"rpg": 78.9, "plain_sharing": 74.9, "dataset": "CIFAR-100"},
}
METHOD_ORDER = ("rpg", "vanilla")
R2_REPRODUCED = 0.9  # claim 2: a straight line in log-log space explains >= 90% of the variance
SMALL_FRACTION = 0.25  # claim 3: "a small fraction" = at most a quarter of the full model's parameters


# --------------------------------------------------------------------------- grid


def channels(width: int) -> list[int]:
    """Stage widths of a narrowed ResNet: ``(w, 2w, 4w, 8w)`` (ResNet-18/34 are ``w = 64``)."""
    return [int(width), 2 * int(width), 4 * int(width), 8 * int(width)]


def model_args(width: int, in_chans: int) -> dict[str, Any]:
    return {"in_chans": int(in_chans), "channels": channels(width)}


def vanilla_params(arch: str, width: int, in_chans: int, num_classes: int) -> int:
    """Parameter count of the plain timm network (every parameter is trainable)."""
    import timm

    import rpg_hf  # noqa: F401  (registers the CIFAR-style ResNets)

    model = timm.create_model(arch, pretrained=False, num_classes=num_classes, **model_args(width, in_chans))
    return int(sum(p.numel() for p in model.parameters()))


def rpg_counts(arch: str, width: int, in_chans: int, num_classes: int, scope: str = "global") -> dict[str, int]:
    """Free (non-generated) and generated parameter counts of the RPG version of a network."""
    import timm

    import rpg_hf

    model = timm.create_model(arch, pretrained=False, num_classes=num_classes, **model_args(width, in_chans))
    rpg_hf.reparameterize(model, rpg_hf.RPGSpec(dof=64, seed=0, scope=scope))
    table = rpg_hf.dof_table(model)
    return {"free_params": int(table.free_params), "generated_params": int(table.generated_params),
            "original_params": int(table.original_params)}


def run_id(arch: str, method: str, width: int, dof: int, seed: int) -> str:
    return f"{arch}-{method}-w{width}-dof{dof}-s{seed}"


def build_grid(cfg: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every run of the sweep, in a fixed order, with its DoF and parameter counts resolved."""
    data = cfg.get("dataset") or {}
    in_chans, num_classes = int(data.get("in_chans", 1)), int(data.get("num_classes", 10))
    width = int(cfg["width"])
    seeds = [int(s) for s in cfg.get("seeds", [0, 1])]
    eq = cfg.get("equal_dof_vanilla") or {}
    eq_arch = eq.get("arch", "cifar_resnet18")
    cache: dict[tuple, Any] = {}

    def vparams(arch: str, w: int) -> int:
        key = ("v", arch, w)
        if key not in cache:
            cache[key] = vanilla_params(arch, w, in_chans, num_classes)
        return cache[key]

    def counts(arch: str, scope: str = "global") -> dict[str, int]:
        key = ("r", arch, scope)
        if key not in cache:
            cache[key] = rpg_counts(arch, width, in_chans, num_classes, scope)
        return cache[key]

    def resolve_dof(arch: str, dof: Any) -> tuple[int, dict[str, Any] | None]:
        if isinstance(dof, Mapping):  # {match_vanilla_width: w}: trainable params = the vanilla net's params
            w = int(dof["match_vanilla_width"])
            target = vparams(eq_arch, w)
            value = target - counts(arch)["free_params"]
            if value <= 0:
                raise ValueError(f"{arch}: vanilla {eq_arch} w{w} ({target} params) is smaller than the "
                                 f"RPG model's free parameters ({counts(arch)['free_params']})")
            return value, {"arch": eq_arch, "width": w, "params": target}
        return int(dof), None

    runs: list[dict[str, Any]] = []

    def add(run: dict[str, Any]) -> None:
        for seed in seeds:
            r = dict(run, seed=seed)
            r["run_id"] = run_id(r["arch"], r["method"], r["width"], r["dof"], seed)
            if all(x["run_id"] != r["run_id"] for x in runs):
                runs.append(r)

    for block in cfg.get("rpg") or []:
        arch = block["arch"]
        dofs = [resolve_dof(arch, d) for d in block.get("dof", [])]
        dofs += [resolve_dof(arch, {"match_vanilla_width": w}) for w in block.get("match_vanilla_widths", [])]
        for dof, match in sorted(dofs, key=lambda t: t[0]):
            c = counts(arch)
            add({"arch": arch, "method": "rpg", "role": "rpg", "width": width, "dof": dof,
                 "params": c["original_params"], "trainable_params": dof + c["free_params"],
                 "free_params": c["free_params"], "scope": "global", "permute": True, "sign_flip": True,
                 "matched_vanilla": match})
    for arch in cfg.get("vanilla_full") or []:
        p = vparams(arch, width)
        add({"arch": arch, "method": "vanilla", "role": "full", "width": width, "dof": p, "params": p,
             "trainable_params": p})
    for w in eq.get("widths", []):
        p = vparams(eq_arch, int(w))
        add({"arch": eq_arch, "method": "vanilla", "role": "equal_dof", "width": int(w), "dof": p, "params": p,
             "trainable_params": p})
    abl = cfg.get("ablations") or {}
    if abl:
        arch = abl["arch"]
        dof, match = resolve_dof(arch, abl["dof"])
        for name, variant in (abl.get("variants") or {}).items():
            unknown = set(variant) - {"permute", "sign_flip", "scope"}
            if unknown:
                raise ValueError(f"ablation {name!r}: unknown field(s) {sorted(unknown)}")
            scope = variant.get("scope", "global")
            c = counts(arch, scope)
            add({"arch": arch, "method": name, "role": "ablation", "width": width, "dof": dof,
                 "params": c["original_params"], "trainable_params": dof + c["free_params"],
                 "free_params": c["free_params"], "scope": scope, "permute": bool(variant.get("permute", True)),
                 "sign_flip": bool(variant.get("sign_flip", True)), "matched_vanilla": match})
    return runs


def protocol_of(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The training/evaluation protocol shared by every run (what the fingerprint covers)."""
    p = dict(cfg.get("protocol") or {})
    data = dict(cfg.get("dataset") or {})
    data.pop("root", None)  # where the files live does not change the protocol
    p.setdefault("epochs", 1)
    p.setdefault("batch_size", 128)
    p.setdefault("lr", 0.1 * p["batch_size"] / 256)
    p.setdefault("momentum", 0.9)
    p.setdefault("nesterov", False)
    p.setdefault("weight_decay", 1e-4)
    p.setdefault("warmup_steps", 0)
    p.setdefault("augmentation", "none")
    p.setdefault("eval_batch_size", 1000)
    if p["augmentation"] not in ("none", "crop+flip", "flip"):
        raise ValueError(f"protocol.augmentation must be 'none', 'flip' or 'crop+flip', got {p['augmentation']!r}")
    return {"dataset": data, "width": int(cfg["width"]), "channels": channels(int(cfg["width"])), **p}


def fingerprint(protocol: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(protocol, sort_keys=True).encode()).hexdigest()[:12]


# --------------------------------------------------------------------------- data


def load_data(cfg: Mapping[str, Any], root: str | None):
    """(train images, train labels, test images, test labels, class names): uint8/int64 tensors."""
    import torch

    from rpg_hf.train.data import load_idx_dataset, to_tensors

    data = cfg.get("dataset") or {}
    root = root or data.get("root")
    train_ds = load_idx_dataset(root, split="train")
    test_ds = load_idx_dataset(root, split="test")
    names = list(train_ds.features["label"].names)
    xtr, ytr = to_tensors(train_ds)
    xte, yte = to_tensors(test_ds)
    n = data.get("train_subset")
    if n:  # a fixed class-balanced subset, the same for every run
        g = torch.Generator().manual_seed(int(data.get("subset_seed", 0)))
        classes = torch.unique(ytr)
        per_class = int(n) // len(classes)
        keep = []
        for c in classes.tolist():
            idx = torch.nonzero(ytr == c).flatten()
            keep.append(idx[torch.randperm(len(idx), generator=g)[:per_class]])
        keep = torch.sort(torch.cat(keep)).values
        xtr, ytr = xtr[keep], ytr[keep]
    m = data.get("test_subset")
    if m:
        xte, yte = xte[: int(m)], yte[: int(m)]
    return xtr, ytr, xte, yte, names


def normalise(x, mean: float, std: float):
    return (x.float().unsqueeze(1) / 255.0 - mean) / std


def augment(x, how: str, g):
    """Batch augmentation on uint8 N×H×W: random 2-px-padded crops and/or horizontal flips (seeded)."""
    import torch

    n, h, w = x.shape
    if how == "none":
        return x
    if how == "crop+flip":
        pad = 2
        xp = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        oy = torch.randint(0, 2 * pad + 1, (n,), generator=g).to(x.device)
        ox = torch.randint(0, 2 * pad + 1, (n,), generator=g).to(x.device)
        rows = (oy[:, None] + torch.arange(h, device=x.device))[:, :, None]
        cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, :]
        x = xp[torch.arange(n, device=x.device)[:, None, None], rows, cols]
    flip = (torch.rand(n, generator=g) < 0.5).to(x.device)
    return torch.where(flip[:, None, None], x.flip(-1), x)


# --------------------------------------------------------------------------- one run


def device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"cpu ({cpu}; {torch.get_num_threads()} thread(s))"


def build_model(run: Mapping[str, Any], cfg: Mapping[str, Any], names: Sequence[str]):
    import timm

    import rpg_hf

    data = cfg.get("dataset") or {}
    args = model_args(run["width"], int(data.get("in_chans", 1)))
    if run["method"] == "vanilla":
        return timm.create_model(run["arch"], pretrained=False, num_classes=len(names), **args)
    config = rpg_hf.RPGConfig(
        backbone="timm", architecture=run["arch"], model_args=args, dof=int(run["dof"]), seed=int(run["seed"]),
        scope=run["scope"], permute=run["permute"], sign_flip=run["sign_flip"], num_labels=len(names),
        id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)},
        image_size=int(data.get("image_size", 28)), crop_pct=1.0,
        image_mean=[float(data.get("mean", 0.5))], image_std=[float(data.get("std", 0.5))],
    )
    return rpg_hf.RPGForImageClassification(config)


def logits_of(model, x):
    out = model(x)
    return out.logits if hasattr(out, "logits") else out


def evaluate(model, x, y, mean, std, batch_size, accelerator) -> tuple[float, float]:
    import torch

    model.eval()
    correct, loss = 0, 0.0
    with torch.inference_mode(), accelerator.autocast():
        for i in range(0, len(x), batch_size):
            logits = logits_of(model, normalise(x[i : i + batch_size], mean, std)).float()
            target = y[i : i + batch_size]
            correct += int((logits.argmax(-1) == target).sum())
            loss += float(torch.nn.functional.cross_entropy(logits, target, reduction="sum"))
    return correct / len(x), loss / len(x)


def train_run(run, cfg, proto, data, accelerator, *, models_dir: Path | None, command: str,
              show_progress: bool) -> dict[str, Any]:
    """Train and evaluate one grid point; return its result record."""
    import torch
    from tqdm.auto import tqdm

    xtr, ytr, xte, yte, names = data
    device = accelerator.device
    dcfg = cfg.get("dataset") or {}
    mean, std = float(dcfg.get("mean", 0.5)), float(dcfg.get("std", 0.5))
    seed = int(run["seed"])
    torch.manual_seed(seed)  # free-tensor init (timm) of this seed
    model = build_model(run, cfg, names).to(device)
    params = int(sum(p.numel() for p in model.parameters()))  # trainable: ring + free, or every vanilla weight
    if params != run["trainable_params"]:
        raise RuntimeError(f"{run['run_id']}: built model has {params} trainable parameters, grid says "
                           f"{run['trainable_params']}")
    opt = torch.optim.SGD(model.parameters(), lr=proto["lr"], momentum=proto["momentum"],
                          nesterov=proto["nesterov"], weight_decay=proto["weight_decay"])
    bs, epochs = int(proto["batch_size"]), int(proto["epochs"])
    steps_per_epoch = math.ceil(len(xtr) / bs)
    total = steps_per_epoch * epochs
    warmup = int(proto["warmup_steps"])

    def lr_at(step: int) -> float:
        if step < warmup:
            return proto["lr"] * (step + 1) / warmup
        t = (step - warmup) / max(1, total - warmup)
        return proto["lr"] * 0.5 * (1.0 + math.cos(math.pi * t))

    g = torch.Generator().manual_seed(10_000 + seed)  # batch order and augmentation of this seed
    step, last_losses = 0, []
    t0 = time.perf_counter()
    model.train()
    bar = tqdm(total=total, desc=run["run_id"], disable=not show_progress, mininterval=5.0, leave=False)
    for _epoch in range(epochs):
        order = torch.randperm(len(xtr), generator=g).to(xtr.device)
        for i in range(steps_per_epoch):
            idx = order[i * bs : (i + 1) * bs]
            x = normalise(augment(xtr[idx], proto["augmentation"], g), mean, std)
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            with accelerator.autocast():
                loss = torch.nn.functional.cross_entropy(logits_of(model, x).float(), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if not math.isfinite(float(loss)):
                raise FloatingPointError(f"{run['run_id']}: loss became {float(loss)} at step {step}")
            last_losses.append(float(loss))
            last_losses = last_losses[-steps_per_epoch:]
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss):.3f}", refresh=False)
    bar.close()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    train_seconds = time.perf_counter() - t0

    t1 = time.perf_counter()
    top1, test_loss = evaluate(model, xte, yte, mean, std, int(proto["eval_batch_size"]), accelerator)
    eval_seconds = time.perf_counter() - t1

    record = {
        "run_id": run["run_id"], "arch": run["arch"], "method": run["method"], "dof": int(run["dof"]),
        "params": int(run["params"]), "seed": seed, "top1": top1, "epochs": epochs,
        "train_seconds": round(train_seconds, 2), "device": device_name(device),
        "role": run["role"], "width": int(run["width"]), "channels": channels(run["width"]),
        "trainable_params": params, "test_loss": test_loss, "train_loss_last_epoch": float(np.mean(last_losses)),
        "steps": total, "train_samples": len(xtr), "test_samples": len(xte), "eval_seconds": round(eval_seconds, 2),
        "threads": torch.get_num_threads(), "process_index": accelerator.process_index,
        "torch": torch.__version__,
    }
    for key in ("free_params", "scope", "permute", "sign_flip", "matched_vanilla"):
        if key in run:
            record[key] = run[key]
    if models_dir is not None and run["method"] != "vanilla":
        record.update(save_rpg(model, run, models_dir / run["run_id"], top1, dcfg, command, xte[:256], mean, std))
    return record


def save_rpg(model, run, directory: Path, top1: float, dcfg, command: str, probe, mean, std) -> dict[str, Any]:
    """Ring-only checkpoint + a model card carrying the test result; reload and compare logits."""
    import torch

    import rpg_hf
    from rpg_hf.hf.cards import write_model_card

    model.eval()
    model.save_pretrained(directory)
    dataset = str(dcfg.get("name", "fashion_mnist"))
    write_model_card(model, directory, results=[{"dataset": dataset, "split": "test", "top1": 100.0 * top1}],
                     datasets=[dataset], recipe_command=command, model_id=run["run_id"])
    reloaded = rpg_hf.RPGForImageClassification.from_pretrained(directory).to(probe.device).eval()
    with torch.inference_mode():
        x = normalise(probe, mean, std)
        diff = float((logits_of(model, x).float() - logits_of(reloaded, x).float()).abs().max())
    size = sum(f.stat().st_size for f in directory.glob("*.safetensors"))
    with contextlib.suppress(ValueError):
        directory = directory.resolve().relative_to(Path.cwd())
    return {"checkpoint": str(directory), "checkpoint_bytes": int(size), "reload_max_abs_logit_diff": diff}


# --------------------------------------------------------------------------- scheduling / IO


def write_text(path: Path, text: str) -> None:
    """Atomic write: a killed run never leaves a half-written file behind (nor do two writers)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


def finished(runs_dir: Path, run: Mapping[str, Any], fp: str) -> bool:
    path = runs_dir / f"{run['run_id']}.json"
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("protocol_fingerprint") == fp
    except (OSError, json.JSONDecodeError):
        return False


def assign(runs: Sequence[Mapping[str, Any]], num_processes: int) -> list[list[Mapping[str, Any]]]:
    """Split runs between processes: most expensive first, dealt in snake order (balanced, deterministic)."""
    def cost(r: Mapping[str, Any]) -> float:  # compute grows like the network's size (width² × depth)
        return float(r["params"])

    order = sorted(runs, key=lambda r: -cost(r))
    shares: list[list[Mapping[str, Any]]] = [[] for _ in range(num_processes)]
    for i, r in enumerate(order):
        k = i % (2 * num_processes)
        shares[k if k < num_processes else 2 * num_processes - 1 - k].append(r)
    return shares


# --------------------------------------------------------------------------- summary


def _group(runs: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mean ± std (over seeds, ddof=1) of top-1 per (arch, method, width, dof)."""
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["arch"], r["method"], r.get("width"), r["dof"]), []).append(r)
    out = []
    for (arch, method, width, dof), rs in groups.items():
        acc = np.array([r["top1"] for r in rs], dtype=float)
        out.append({
            "arch": arch, "method": method, "role": rs[0].get("role"), "width": width, "dof": dof,
            "params": rs[0].get("params"), "trainable_params": rs[0].get("trainable_params"),
            "seeds": sorted(int(r["seed"]) for r in rs), "n": len(rs), "top1_mean": float(acc.mean()),
            "top1_std": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
            "train_loss_mean": float(np.mean([r.get("train_loss_last_epoch", float("nan")) for r in rs])),
            "matched_vanilla": rs[0].get("matched_vanilla"),
        })
    rank = {m: i for i, m in enumerate(METHOD_ORDER)}
    out.sort(key=lambda g: (g["arch"], rank.get(g["method"], len(rank)), g["method"], g["dof"]))
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def _pm(g: Mapping[str, Any]) -> str:
    return f"{_pct(g['top1_mean'])} ± {_pct(g['top1_std'])}" if g["n"] > 1 else _pct(g["top1_mean"])


def _noise(a: Mapping[str, Any], b: Mapping[str, Any]) -> float:
    """Spread of a difference of two means: sqrt(std_a² + std_b²) (seed-to-seed std, ddof=1)."""
    return math.hypot(a["top1_std"], b["top1_std"])


def _beyond(diff: float, a, b) -> str:
    n = _noise(a, b)
    return "beyond the seed spread" if abs(diff) > n else "within the seed spread"


def claims(groups: Sequence[Mapping[str, Any]], fits: Mapping[str, Mapping[str, Any]], rpg_archs: Sequence[str],
           ablation: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """One computed verdict per paper claim (reproduced / partly / not reproduced / not tested)."""
    out: list[dict[str, Any]] = []
    get = {(g["arch"], g["method"], g["dof"]): g for g in groups}
    full = {g["arch"]: g for g in groups if g["role"] == "full"}
    vanilla_by = {(g["arch"], g["width"]): g for g in groups if g["method"] == "vanilla"}

    # Claim 1 — equal DoF: the deeper RPG network against the vanilla network with as many parameters.
    deep = max(rpg_archs, key=lambda a: (full.get(a) or {}).get("params") or 0) if rpg_archs else None
    pairs = []
    for g in groups:
        if g["arch"] == deep and g["method"] == "rpg" and g["matched_vanilla"]:
            m = g["matched_vanilla"]
            v = vanilla_by.get((m["arch"], m["width"]))
            if v is not None and v["arch"] != deep:
                pairs.append((g, v))
    c1: dict[str, Any] = {"claim": 1, "title": "At equal DoF a deeper RPG network beats a vanilla network",
                          "paper": "CIFAR-100: ResNet-34-RPG 78.9% at 11M DoF vs vanilla ResNet-18 77.5% at 11M "
                                   "(vanilla ResNet-34 79.1% at 21M)", "pairs": []}
    lines = []
    for g, v in pairs:
        diff = g["top1_mean"] - v["top1_mean"]
        c1["pairs"].append({"dof": g["dof"], "trainable_params": g["trainable_params"], "vanilla_arch": v["arch"],
                            "vanilla_width": v["width"], "vanilla_params": v["params"], "rpg_top1": g["top1_mean"],
                            "vanilla_top1": v["top1_mean"], "diff": diff, "noise": _noise(g, v)})
        lines.append(f"{deep}-RPG {_pm(g)}% at {g['dof']:,} DoF vs {v['arch']} w{v['width']} {_pm(v)}% at "
                     f"{v['params']:,} params: {100 * diff:+.2f} points ({_beyond(diff, g, v)})")
    if pairs:
        wins = sum(p["diff"] > 0 for p in c1["pairs"])
        clear = sum(p["diff"] > p["noise"] for p in c1["pairs"])
        c1["verdict"] = ("reproduced" if clear == len(pairs) else "partly reproduced" if wins else "not reproduced")
        c1["text"] = (f"{c1['verdict']} (criterion: a win beyond the seed spread at every matched point): the deeper "
                      f"RPG network wins {wins} of {len(pairs)} equal-DoF comparisons, {clear} of them beyond the "
                      "seed spread. " + "; ".join(lines) + ".")
        if deep in full:
            top = max((p for p in pairs), key=lambda p: p[0]["dof"])[0]
            d = top["top1_mean"] - full[deep]["top1_mean"]
            c1["text"] += (f" Against the full vanilla {deep} ({full[deep]['params']:,} params, {_pm(full[deep])}%) "
                           f"the RPG network at {top['dof']:,} DoF is {100 * d:+.2f} points "
                           f"(paper: {PAPER['claim1']['rpg_deep'] - PAPER['claim1']['vanilla_deep']:+.1f}).")
    else:
        c1.update(verdict="not tested", text="not tested: no deeper-RPG / equal-DoF vanilla pair in this sweep.")
    out.append(c1)

    # Claim 2 — log-linear law.
    c2: dict[str, Any] = {"claim": 2, "title": "Accuracy rises log-linearly with DoF (power law in the error)",
                          "paper": "a straight line in log DoF from tiny DoF up to the full model", "fits": []}
    parts, ok = [], []
    for arch in rpg_archs:
        f = fits.get(arch)
        if not f:
            continue
        rs = sorted((g for g in groups if g["arch"] == arch and g["method"] == "rpg"), key=lambda g: g["dof"])
        monotone = all(b["top1_mean"] >= a["top1_mean"] for a, b in zip(rs, rs[1:], strict=False))
        good = f["exponent"] > 0 and f["r2"] >= R2_REPRODUCED
        ok.append(good)
        c2["fits"].append({**f, "monotone": monotone})
        span = math.log10(f["dof_max"] / f["dof_min"])
        parts.append(f"{arch}: error ∝ DoF^-{f['exponent']:.3f}, R² = {f['r2']:.3f} over {span:.1f} decades "
                     f"({rs[0]['dof']:,}→{rs[-1]['dof']:,} DoF: {_pm(rs[0])}% → {_pm(rs[-1])}%"
                     f"{', rising at every step' if monotone else ', not monotone'})")
    if ok:
        c2["verdict"] = "reproduced" if all(ok) else "partly reproduced" if any(ok) else "not reproduced"
        c2["text"] = f"{c2['verdict']} (criterion: exponent > 0 and R² ≥ {R2_REPRODUCED}): " + "; ".join(parts) + "."
    else:
        c2.update(verdict="not tested", text="not tested: no RPG arch with two or more DoF values.")
    out.append(c2)

    # Claim 3 — most of the accuracy at a small fraction of the DoF.
    c3: dict[str, Any] = {"claim": 3, "title": "RPG keeps much of the accuracy at a small fraction of the DoF",
                          "paper": "ImageNet: ResNet-18-RPG 67.2% at ~18% of the DoF vs 70.5% (95.3% of it kept)",
                          "points": []}
    keep_paper = PAPER["claim3"]["rpg"] / PAPER["claim3"]["vanilla"]
    parts, ok = [], []
    for arch in rpg_archs:
        if arch not in full:
            continue
        v = full[arch]
        cands = [g for g in groups if g["arch"] == arch and g["method"] == "rpg"
                 and g["dof"] <= SMALL_FRACTION * v["params"]]
        if not cands:
            continue
        g = max(cands, key=lambda g: g["dof"])
        frac, kept = g["dof"] / v["params"], g["top1_mean"] / v["top1_mean"]
        ok.append(kept >= keep_paper)
        c3["points"].append({"arch": arch, "dof": g["dof"], "dof_fraction": frac, "rpg_top1": g["top1_mean"],
                             "vanilla_top1": v["top1_mean"], "kept": kept,
                             "error_ratio": (1 - g["top1_mean"]) / max(1e-12, 1 - v["top1_mean"])})
        parts.append(f"{arch}-RPG {_pm(g)}% at {g['dof']:,} DoF ({100 * frac:.1f}% of {v['params']:,}) vs "
                     f"vanilla {_pm(v)}%: {100 * kept:.1f}% of the accuracy kept, "
                     f"{100 * (g['top1_mean'] - v['top1_mean']):+.2f} points")
    if ok:
        c3["verdict"] = "reproduced" if all(ok) else "partly reproduced" if any(ok) else "not reproduced"
        c3["text"] = (f"{c3['verdict']} (criterion: at ≤ {100 * SMALL_FRACTION:.0f}% of the parameters keep ≥ "
                      f"{100 * keep_paper:.1f}% of the accuracy, the paper's ratio): " + "; ".join(parts) + ".")
    else:
        c3.update(verdict="not tested", text="not tested: no RPG point below a quarter of a full vanilla network.")
    out.append(c3)

    # Claim 4 — permutation and sign flip matter.
    c4: dict[str, Any] = {"claim": 4, "title": "Permutation and sign flip matter",
                          "paper": "CIFAR-100: plain random weight sharing 74.9% vs RPG 78.9%", "ablations": []}
    ref = get.get((ablation["arch"], "rpg", ablation["dof"])) if ablation else None
    abls = [g for g in groups if g["role"] == "ablation"]
    if ref is not None and abls:
        parts = []
        for a in abls:
            diff = ref["top1_mean"] - a["top1_mean"]
            c4["ablations"].append({"method": a["method"], "top1": a["top1_mean"], "rpg_top1": ref["top1_mean"],
                                    "rpg_minus_ablation": diff, "noise": _noise(ref, a)})
            parts.append(f"{a['method']} {_pm(a)}% ({100 * -diff:+.2f}, {_beyond(diff, ref, a)})")
        plain = [x for x in c4["ablations"] if x["method"] == ablation.get("plain_sharing", "plain-sharing")]
        if plain:
            p = plain[0]
            c4["verdict"] = ("reproduced" if p["rpg_minus_ablation"] > p["noise"] else
                             "direction only (within the seed spread)" if p["rpg_minus_ablation"] > 0 else
                             "not reproduced")
        else:
            c4["verdict"] = "not tested (no plain-sharing run)"
        c4["text"] = (f"{c4['verdict']}: {ablation['arch']}-RPG at {ref['dof']:,} DoF {_pm(ref)}% vs " + "; ".join(parts)
                      + f" (paper: plain sharing {PAPER['claim4']['plain_sharing'] - PAPER['claim4']['rpg']:+.1f}).")
    else:
        c4.update(verdict="not tested", text="not tested: no ablation runs next to their RPG reference.")
    out.append(c4)
    return out


def summarize(cfg: Mapping[str, Any], grid: Sequence[Mapping[str, Any]], proto: Mapping[str, Any], fp: str,
              results_dir: Path, runs_dir: Path, command: str) -> dict[str, Any]:
    """summary.json, the plot, table.md and README.md from the per-run JSON files."""
    from rpg_hf.train import scaling

    wanted = {r["run_id"]: r for r in grid}
    runs, stale = [], []
    for path in sorted(runs_dir.glob("*.json")):
        rec = json.loads(path.read_text(encoding="utf-8"))
        if rec.get("run_id") not in wanted:
            continue
        if rec.get("protocol_fingerprint") != fp:
            stale.append(rec["run_id"])
            continue
        runs.append(rec)
    order = {rid: i for i, rid in enumerate(wanted)}
    runs.sort(key=lambda r: order[r["run_id"]])
    missing = [rid for rid in wanted if rid not in {r["run_id"] for r in runs}]

    rpg_archs = list(dict.fromkeys(b["arch"] for b in cfg.get("rpg") or []))
    fits: dict[str, dict[str, Any]] = {}
    fit_objs = {}
    for arch in rpg_archs:
        sel = [r for r in runs if r["arch"] == arch and r["method"] == "rpg"]
        if len({r["dof"] for r in sel}) < 2:
            continue
        f = scaling.fit_runs(runs, arch, method="rpg")
        fit_objs[arch] = f
        fits[arch] = {"arch": arch, "exponent": f.exponent, "r2": f.r2, "coefficient": f.coefficient,
                      "n_points": f.n_points, "dof_min": min(r["dof"] for r in sel),
                      "dof_max": max(r["dof"] for r in sel), "law": "error = coefficient * dof**(-exponent)"}
    primary = cfg.get("fit_arch") or (rpg_archs[0] if rpg_archs else None)
    groups = _group(runs)
    abl = cfg.get("ablations") or None
    abl_info = None
    if abl:
        abl_dof = next((r["dof"] for r in grid if r["role"] == "ablation"), None)
        abl_info = {"arch": abl["arch"], "dof": abl_dof, "plain_sharing": abl.get("plain_sharing", "plain-sharing")}
    verdicts = claims(groups, fits, rpg_archs, abl_info)

    devices = sorted({r["device"] for r in runs})
    protocol = {
        **proto,
        "optimizer": (f"SGD(momentum={proto['momentum']}, nesterov={proto['nesterov']}, "
                      f"weight_decay={proto['weight_decay']} on every parameter)"),
        "schedule": f"per-step cosine to 0, {proto['warmup_steps']} linear warm-up steps",
        "train_samples": runs[0]["train_samples"] if runs else None,
        "test_samples": runs[0]["test_samples"] if runs else None,
        "steps_per_run": runs[0]["steps"] if runs else None,
        "seeds": list(cfg.get("seeds", [0, 1])),
        "device": devices[0] if len(devices) == 1 else devices,
        "num_processes": max((r.get("num_processes", 1) for r in runs), default=1),
        "threads_per_process": sorted({r.get("threads") for r in runs if r.get("threads")}),
        "fingerprint": fp,
        "command": command,
    }
    summary = {
        "protocol": protocol,
        "runs": runs,
        "fit": fits.get(primary) if primary else None,
        "fits": list(fits.values()),
        "aggregate": groups,
        "claims": verdicts,
        "compute": {"runs_finished": len(runs), "runs_in_grid": len(grid), "missing": missing,
                    "stale_protocol": stale,
                    "sum_train_seconds": round(sum(r["train_seconds"] for r in runs), 1),
                    "sum_eval_seconds": round(sum(r.get("eval_seconds", 0.0) for r in runs), 1)},
    }
    results_dir.mkdir(parents=True, exist_ok=True)
    write_json(results_dir / "summary.json", summary)

    plot_path = results_dir / "dof_vs_error.png"
    if runs:
        full_means = [{"arch": g["arch"], "method": "vanilla full width", "dof": g["dof"], "top1": g["top1_mean"]}
                      for g in groups if g["role"] == "full"]
        shown = [dict(r, method="vanilla equal-DoF" if r["role"] == "equal_dof" else r["method"])
                 for r in runs if r["role"] != "full"]
        title = cfg.get("plot_title") or f"{cfg.get('name', 'sweep')}: test error vs DoF"
        tmp = plot_path.with_name(f".{plot_path.stem}.{os.getpid()}.png")
        scaling.plot_scaling(shown, fit_objs, tmp, vanilla=full_means, title=title)
        os.replace(tmp, plot_path)
    table = render_table(groups, fits, verdicts, protocol, summary["compute"])
    write_text(results_dir / "table.md", table)
    write_text(results_dir / "README.md", render_readme(cfg, table, protocol, plot_path.name))
    return summary


def render_table(groups, fits, verdicts, protocol, compute) -> str:
    lines = ["| arch | method | width | DoF | params (network) | trainable | seeds | top-1 % (mean ± std) "
             "| train loss (last epoch) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for g in groups:
        method = g["method"] + (" (full)" if g["role"] == "full" else " (equal-DoF)" if g["role"] == "equal_dof" else "")
        lines.append(f"| {g['arch']} | {method} | {g['width']} | {g['dof']:,} | {g['params']:,} | "
                     f"{g['trainable_params']:,} | {g['n']} | {_pm(g)} | {g['train_loss_mean']:.3f} |")
    lines.append("")
    for f in fits.values():
        lines.append(f"Fit ({f['arch']}, RPG runs): error = {f['coefficient']:.3g} · DoF^-{f['exponent']:.4f}, "
                     f"R² = {f['r2']:.3f} ({f['n_points']} runs, DoF {f['dof_min']:,}–{f['dof_max']:,}).  ")
    lines.append("")
    for c in verdicts:
        lines.append(f"- **Claim {c['claim']} — {c['title']}** (paper: {c['paper']}): {c['text']}")
    lines.append("")
    lines.append(f"Runs finished: {compute['runs_finished']} of {compute['runs_in_grid']}"
                 + (f" (missing: {', '.join(compute['missing'])})" if compute["missing"] else "")
                 + f"; training time summed over runs {compute['sum_train_seconds'] / 60:.1f} min, evaluation "
                 f"{compute['sum_eval_seconds'] / 60:.1f} min.")
    return "\n".join(lines) + "\n"


def render_readme(cfg, table: str, protocol: Mapping[str, Any], plot_name: str) -> str:
    d = protocol.get("dataset") or {}
    aug = protocol["augmentation"]
    reduced = cfg.get("reduced_note")
    text = [
        f"# {cfg.get('title', cfg.get('name', 'RPG DoF sweep'))}",
        "",
        "Generated by `recipes/science/sweep.py` from the per-run JSON files in `runs/`; do not edit by hand.",
        "",
        "Reproduce (from a clean checkout, after `apt-get install -y dataset-fashion-mnist`):",
        "",
        "```bash",
        protocol["command"],
        "```",
        "",
    ]
    if reduced:
        text += [f"> **Reduced protocol.** {reduced.strip()}", ""]
    for note in cfg.get("notes") or []:
        text += [str(note).strip(), ""]
    text += [
        "Protocol (identical for every run): "
        f"{protocol.get('train_samples'):,} training images"
        + (f" (class-balanced subset, seed {d.get('subset_seed', 0)})" if d.get("train_subset") else "")
        + f", {protocol['epochs']} epoch(s) of batch {protocol['batch_size']} ({protocol.get('steps_per_run')} steps), "
        f"{protocol['optimizer']}, lr {protocol['lr']:g} with {protocol['schedule']}, augmentation: {aug}; "
        f"test top-1 on all {protocol.get('test_samples'):,} test images; seeds {protocol['seeds']}; "
        f"base width {protocol['width']} (stage channels {protocol['channels']}); device: {protocol['device']}.",
        "",
        f"![test error vs DoF]({plot_name})",
        "",
        table,
    ]
    return "\n".join(text)


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="grid YAML (recipes/science/fashion_mnist.yaml)")
    p.add_argument("--data", default=None, help="IDX directory (default: the YAML's dataset.root, else Debian's)")
    p.add_argument("--results-dir", default=None, help="summary/plot/table folder (default: the YAML's results_dir)")
    p.add_argument("--models-dir", default=None, help="ring-only checkpoints of the RPG runs (default: YAML models_dir)")
    p.add_argument("--no-save-models", action="store_true", help="do not save the RPG runs' checkpoints")
    p.add_argument("--summarize-only", action="store_true", help="only rebuild summary.json/plot/table from runs/")
    p.add_argument("--list", action="store_true", help="print the grid (run id, DoF, params) and exit")
    p.add_argument("--max-runs", type=int, default=None, help="train at most this many pending runs (per process)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: as launched)")
    p.add_argument("--cpu", action="store_true", help="force the CPU even when a GPU is present")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = yaml.safe_load(Path(args.config).read_text(encoding="utf-8"))
    results_dir = Path(args.results_dir or cfg.get("results_dir", "results/sweep"))
    runs_dir = results_dir / "runs"
    models_dir = None if args.no_save_models else Path(args.models_dir or cfg.get("models_dir", "outputs/science"))
    command = cfg.get("command") or DEFAULT_COMMAND
    proto = protocol_of(cfg)
    fp = fingerprint(proto)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    grid = build_grid(cfg)
    if args.list:
        for r in grid:
            print(f"{r['run_id']:<48} dof={r['dof']:>9,} params={r['params']:>9,} trainable={r['trainable_params']:>9,}")
        print(f"{len(grid)} runs; protocol fingerprint {fp}")
        return 0
    if args.summarize_only:
        summary = summarize(cfg, grid, proto, fp, results_dir, runs_dir, command)
        print(f"wrote {results_dir / 'summary.json'} ({summary['compute']['runs_finished']} runs)")
        return 0

    from accelerate import Accelerator

    # Without an accelerator, cpu=True is what makes `accelerate launch --num_processes N` start N CPU
    # workers (DistributedType.MULTI_CPU); cpu=False would leave each of them believing it is alone.
    accelerator = Accelerator(cpu=args.cpu or not torch.accelerator.is_available())
    rank, world = accelerator.process_index, accelerator.num_processes
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # Runs are independent and nothing is ever all-reduced, so the process group is released:
        # transformers' save_pretrained writes nothing on a rank other than 0 of a live group.
        torch.distributed.destroy_process_group()
    pending = [r for r in grid if not finished(runs_dir, r, fp)]
    mine = assign(pending, world)[rank]
    if args.max_runs is not None:
        mine = mine[: args.max_runs]

    def log(*parts: Any) -> None:
        print(f"[rank {rank}/{world}]", *parts, flush=True)

    log(f"{len(grid)} runs in the grid, {len(grid) - len(pending)} already finished (skipped), "
        f"{len(pending)} pending, {len(mine)} for this process on {accelerator.device}; protocol {fp}")
    t_start = time.time()
    if mine:
        xtr, ytr, xte, yte, names = load_data(cfg, args.data)
        dev = accelerator.device
        data = (xtr.to(dev), ytr.to(dev), xte.to(dev), yte.to(dev), names)
        for i, run in enumerate(mine):
            t0 = time.time()
            rec = train_run(copy.deepcopy(run), cfg, proto, data, accelerator, models_dir=models_dir,
                            command=command, show_progress=accelerator.is_main_process)
            rec.update(protocol_fingerprint=fp, num_processes=world, mixed_precision=str(accelerator.mixed_precision))
            rec["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            write_json(runs_dir / f"{run['run_id']}.json", rec)
            log(f"({i + 1}/{len(mine)}) {run['run_id']}: top-1 {100 * rec['top1']:.2f}% "
                f"train {rec['train_seconds']:.0f}s, total {time.time() - t0:.0f}s")
    log(f"done in {time.time() - t_start:.0f}s")
    still = [r["run_id"] for r in grid if not finished(runs_dir, r, fp)]
    if still:  # another process is still training: the last one to finish writes the summary
        log(f"{len(still)} run(s) not finished yet; the process that finishes last writes the summary "
            f"(or run again with --summarize-only)")
        return 0
    summary = summarize(cfg, grid, proto, fp, results_dir, runs_dir, command)
    log(f"wrote {results_dir / 'summary.json'} ({summary['compute']['runs_finished']} runs)")
    for c in summary["claims"]:
        log(f"claim {c['claim']}: {c['verdict']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
