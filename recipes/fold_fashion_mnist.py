#!/usr/bin/env python
"""Fold a trained network into a ring, on Fashion-MNIST: is a folded start better than a random one?

Issue 17's measurement.  One vanilla ``cifar_resnet18`` (the science sweep's family and width) is
trained, then folded (``rpg_hf.compress.fold``: least-squares ring) at ~25%, ~5% and ~1% of its generated
weights.  For each DoF the test top-1 is measured

(a)  right after folding, and after re-estimating the BatchNorm statistics (no gradient step);
(b)  after a short fine-tune of the folded model, without and with distillation from the unfolded
     network (KL on logits at temperature T, weight w);
(c)  for an RPG network of the same DoF trained from its seeded random ring for the same number
     of steps — and, as the equal-compute comparison, for the teacher's steps plus those steps.

Every training run uses one schedule (SGD momentum 0.9, wd 1e-4 on everything, peak lr, linear
warm-up over 10% of the steps, then cosine to 0, batch 128, no augmentation) on the science
sweep's fixed class-balanced training subset; the test set is all 10,000 images.  One JSON per
finished run under ``<out>/runs/`` (an interrupted run resumes where it stopped), then
``summary.json`` and ``table.md``.

    python recipes/fold_fashion_mnist.py --out results/fold          # ~25 min on 1 CPU thread
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ARCH = "cifar_resnet18"
MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST training-set pixel statistics (as the sweep)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="results/fold", help="per-run JSON, summary.json, table.md")
    p.add_argument("--models-dir", default="outputs/fold", help="teacher weights and folded ring-only checkpoints")
    p.add_argument("--data", default=None, help="IDX folder (default: /usr/share/datasets/fashion-mnist)")
    p.add_argument("--width", type=int, default=8, help="base width w: stage channels (w, 2w, 4w, 8w)")
    p.add_argument("--train-subset", type=int, default=10_000, help="class-balanced training subset (0: all)")
    p.add_argument("--test-subset", type=int, default=0, help="first N test images (0: all 10,000)")
    p.add_argument("--teacher-epochs", type=float, default=4.0)
    p.add_argument("--finetune-epochs", type=float, default=1.0, help="fine-tune and from-scratch length")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.05, 0.01],
                   help="DoF as a fraction of the generated weights")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.2, help="peak lr of the teacher and from-scratch runs (the sweep's)")
    p.add_argument("--finetune-lrs", type=float, nargs="+", default=[0.2, 0.02],
                   help="peak lrs of the fine-tunes: the from-scratch lr and 10x lower (usual fine-tuning practice)")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--distill-temperature", type=float, default=4.0)
    p.add_argument("--distill-weight", type=float, default=0.5)
    p.add_argument("--bn-batches", type=int, default=20, help="training batches for the BN re-estimate in (a)")
    p.add_argument("--no-long-scratch", action="store_true", help="skip the equal-compute from-scratch runs")
    p.add_argument("--no-relative", action="store_true",
                   help="skip the arms that fold with the relative-error weighting (fit_rings weighting='relative')")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--summarize-only", action="store_true")
    return p.parse_args(argv)


# --------------------------------------------------------------------------- data and models


def load_data(args):
    from rpg_hf.train.data import load_idx_dataset, to_tensors

    xtr, ytr = to_tensors(load_idx_dataset(args.data, split="train"))
    xte, yte = to_tensors(load_idx_dataset(args.data, split="test"))
    if args.train_subset:  # the science sweep's subset: seeded, class-balanced, sorted
        g = torch.Generator().manual_seed(0)
        per_class = args.train_subset // 10
        keep = []
        for c in range(10):
            idx = torch.nonzero(ytr == c).flatten()
            keep.append(idx[torch.randperm(len(idx), generator=g)[:per_class]])
        keep = torch.sort(torch.cat(keep)).values
        xtr, ytr = xtr[keep], ytr[keep]
    if args.test_subset:
        xte, yte = xte[: args.test_subset], yte[: args.test_subset]
    return xtr, ytr, xte, yte


def normalise(x):
    return (x.float().unsqueeze(1) / 255.0 - MEAN) / STD


def model_args(width: int) -> dict[str, Any]:
    return {"in_chans": 1, "channels": [width, 2 * width, 4 * width, 8 * width]}


def vanilla(args):
    import timm

    import rpg_hf  # noqa: F401  (registers cifar_resnet*)

    torch.manual_seed(args.seed)
    model = timm.create_model(ARCH, pretrained=False, num_classes=10, **model_args(args.width))
    model.pretrained_cfg = {**model.pretrained_cfg, "mean": (MEAN,), "std": (STD,), "input_size": (1, 28, 28)}
    return model


def rpg_config(teacher, dof: int, args):
    from rpg_hf.compress.fold import config_from_model

    return config_from_model(teacher, dof, seed=args.seed)


def logits_of(model, x):
    out = model(x)
    return out.logits if hasattr(out, "logits") else out


@torch.no_grad()
def evaluate(model, x, y, batch_size: int = 1000) -> dict[str, float]:
    model.eval()
    correct, loss = 0, 0.0
    t0 = time.perf_counter()
    for i in range(0, len(x), batch_size):
        logits = logits_of(model, normalise(x[i : i + batch_size])).float()
        correct += int((logits.argmax(-1) == y[i : i + batch_size]).sum())
        loss += float(F.cross_entropy(logits, y[i : i + batch_size], reduction="sum"))
    return {"top1": 100.0 * correct / len(x), "test_loss": loss / len(x), "eval_seconds": time.perf_counter() - t0}


def batches(n: int, bs: int, steps: int, seed: int):
    """Index batches for ``steps`` steps: a fresh seeded permutation per epoch (the same for every arm)."""
    g = torch.Generator().manual_seed(10_000 + seed)
    per_epoch = n // bs
    step = 0
    while step < steps:
        order = torch.randperm(n, generator=g)
        for i in range(per_epoch):
            if step >= steps:
                return
            yield order[i * bs : (i + 1) * bs]
            step += 1


def train(model, xtr, ytr, steps: int, args, teacher=None, lr: float | None = None) -> dict[str, Any]:
    lr = args.lr if lr is None else lr
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=args.weight_decay)
    warmup = max(1, round(0.1 * steps))

    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        return lr * 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    t_temp, w = args.distill_temperature, args.distill_weight
    losses = []
    model.train()
    t0 = time.perf_counter()
    for step, idx in enumerate(batches(len(xtr), args.batch_size, steps, args.seed)):
        x, y = normalise(xtr[idx]), ytr[idx]
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        logits = logits_of(model, x).float()
        loss = F.cross_entropy(logits, y)
        if teacher is not None:
            with torch.no_grad():
                target = logits_of(teacher, x).float()
            kd = F.kl_div(F.log_softmax(logits / t_temp, -1), F.log_softmax(target / t_temp, -1), log_target=True,
                          reduction="batchmean") * t_temp**2
            loss = (1 - w) * loss + w * kd
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"loss became {value} at step {step}")
        losses.append(value)
    per_epoch = len(xtr) // args.batch_size
    return {"steps": steps, "lr": lr, "warmup_steps": warmup, "train_seconds": time.perf_counter() - t0,
            "train_loss_last_epoch": sum(losses[-per_epoch:]) / len(losses[-per_epoch:])}


# --------------------------------------------------------------------------- bookkeeping


def protocol(args) -> dict[str, Any]:
    keys = ("width", "train_subset", "test_subset", "teacher_epochs", "finetune_epochs", "batch_size", "lr",
            "finetune_lrs", "weight_decay", "distill_temperature", "distill_weight", "bn_batches", "seed")
    return {"arch": ARCH, **{k: getattr(args, k) for k in keys}}


def fingerprint(proto) -> str:
    return hashlib.sha256(json.dumps(proto, sort_keys=True).encode()).hexdigest()[:12]


def device_name() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu ({cpu}; {torch.get_num_threads()} thread(s))"


class Runs:
    def __init__(self, out: Path, proto: dict[str, Any]):
        self.dir = out / "runs"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proto, self.fp = proto, fingerprint(proto)

    def get(self, run_id: str) -> dict[str, Any] | None:
        path = self.dir / f"{run_id}.json"
        if not path.is_file():
            return None
        rec = json.loads(path.read_text())
        return rec if rec.get("fingerprint") == self.fp else None

    def put(self, run_id: str, rec: dict[str, Any]) -> dict[str, Any]:
        rec = {"run_id": run_id, **rec, "fingerprint": self.fp, "protocol": self.proto, "device": device_name(),
               "torch": torch.__version__}
        (self.dir / f"{run_id}.json").write_text(json.dumps(rec, indent=2) + "\n")
        print(f"[{time.strftime('%H:%M:%S')}] {run_id}: top-1 {rec.get('top1', float('nan')):.2f}%", flush=True)
        return rec


def pct_id(fraction: float) -> str:
    return f"{100 * fraction:g}pct"


# --------------------------------------------------------------------------- the experiment


def run(args) -> None:
    from rpg_hf.compress.fold import fold, recalibrate_batchnorm
    from rpg_hf.reparam import plan_layers
    from rpg_hf.spec import RPGSpec

    torch.set_num_threads(args.threads)
    out, models = Path(args.out), Path(args.models_dir)
    models.mkdir(parents=True, exist_ok=True)
    proto = protocol(args)
    runs = Runs(out, proto)
    xtr, ytr, xte, yte = load_data(args)
    per_epoch = len(xtr) // args.batch_size
    teacher_steps = round(args.teacher_epochs * per_epoch)
    ft_steps = round(args.finetune_epochs * per_epoch)

    # the trained vanilla network
    teacher = vanilla(args)
    weights = models / f"teacher-{runs.fp}.pt"
    rec = runs.get("teacher")
    if rec is None or not weights.is_file():
        info = train(teacher, xtr, ytr, teacher_steps, args)
        torch.save(teacher.state_dict(), weights)
        rec = runs.put("teacher", {"arm": "teacher", "method": "vanilla", "params": sum(p.numel() for p in
                                   teacher.parameters()), **info, **evaluate(teacher, xte, yte)})
    else:
        teacher.load_state_dict(torch.load(weights, weights_only=True))
    teacher.eval().requires_grad_(False)
    layers, _ = plan_layers(teacher, RPGSpec(dof=1))
    generated = sum(layer.numel for layer in layers)

    def fresh_rpg(dof: int):
        from rpg_hf import RPGForImageClassification

        config = rpg_config(vanilla(args), dof, args)
        torch.manual_seed(args.seed)  # the free tensors' init, as the teacher's
        return RPGForImageClassification(config)

    folds = {}
    for fraction in args.fractions:
        dof = max(1, round(fraction * generated))
        common = {"dof": dof, "dof_fraction": dof / generated, "generated_params": generated}
        tag = pct_id(fraction)

        def folded_model(dof=dof, raw_eval=False, weighting=None):
            """Folded, then BatchNorm statistics re-estimated on a few training batches (no labels, no step)."""
            model, report = fold(teacher, rpg_config(teacher, dof, args), weighting=weighting)
            raw = evaluate(model, xte, yte) if raw_eval else None
            g = torch.Generator().manual_seed(20_000 + args.seed)
            order = torch.randperm(len(xtr), generator=g)
            n = recalibrate_batchnorm(model, (normalise(xtr[order[i * args.batch_size:(i + 1) * args.batch_size]])
                                              for i in range(args.bn_batches)))
            return model, report, raw, n

        if runs.get(f"fold-{tag}") is None:
            model, report, raw, n = folded_model(raw_eval=True)
            model.save_pretrained(models / f"folded-{tag}", model_card=False)
            recal = evaluate(model, xte, yte)
            runs.put(f"fold-{tag}", {"arm": "folded", **common, **raw, "bn_recalibrated": {**recal, "batches": n},
                                     "fold": report.to_dict()})
        for lr in args.finetune_lrs:
            for arm, kd in (("finetune", False), ("finetune-kd", True)):
                run_id = f"{arm}-lr{lr:g}-{tag}"
                if runs.get(run_id) is None:
                    model, _, _, _ = folded_model()
                    info = train(model, xtr, ytr, ft_steps, args, teacher=teacher if kd else None, lr=lr)
                    runs.put(run_id, {"arm": arm, "start": "folded + BN re-estimate", **common, **info,
                                      **evaluate(model, xte, yte)})
        if runs.get(f"scratch-{tag}") is None:
            model = fresh_rpg(dof)
            info = train(model, xtr, ytr, ft_steps, args)
            runs.put(f"scratch-{tag}", {"arm": "scratch", **common, **info, **evaluate(model, xte, yte)})
        folds[tag] = (common, folded_model)
    if not args.no_relative:  # the fit that weighs every layer's relative error equally (fit_rings "relative")
        for tag, (common, folded_model) in folds.items():
            if runs.get(f"fold-relative-{tag}") is None:
                model, report, raw, n = folded_model(raw_eval=True, weighting="relative")
                recal = evaluate(model, xte, yte)
                runs.put(f"fold-relative-{tag}", {"arm": "folded (relative)", **common, **raw,
                                                  "bn_recalibrated": {**recal, "batches": n}, "fold": report.to_dict()})
            for lr in args.finetune_lrs:
                run_id = f"finetune-relative-lr{lr:g}-{tag}"
                if runs.get(run_id) is None:
                    model, _, _, _ = folded_model(weighting="relative")
                    info = train(model, xtr, ytr, ft_steps, args, lr=lr)
                    runs.put(run_id, {"arm": "finetune (relative fold)", "start": "folded (relative) + BN re-estimate",
                                      **common, **info, **evaluate(model, xte, yte)})
    if not args.no_long_scratch:
        for fraction in args.fractions:
            dof = max(1, round(fraction * generated))
            tag = pct_id(fraction)
            if runs.get(f"scratch-long-{tag}") is None:
                model = fresh_rpg(dof)
                info = train(model, xtr, ytr, teacher_steps + ft_steps, args)
                runs.put(f"scratch-long-{tag}", {"arm": "scratch-long", "dof": dof, "dof_fraction": dof / generated,
                                                 "generated_params": generated, **info, **evaluate(model, xte, yte)})


def summarize(args) -> str:
    out = Path(args.out)
    proto = protocol(args)
    fp = fingerprint(proto)
    recs = {}
    for path in sorted((out / "runs").glob("*.json")):
        rec = json.loads(path.read_text())
        if rec.get("fingerprint") == fp:
            recs[rec["run_id"]] = rec
    teacher = recs.get("teacher")
    rows = []
    for fraction in args.fractions:
        tag = pct_id(fraction)
        f = recs.get(f"fold-{tag}")

        def top(run_id):
            r = recs.get(run_id)
            return f"{r['top1']:.2f}" if r else "—"

        rows.append({
            "fraction": fraction, "dof": f["dof"] if f else None, "generated_params": f["generated_params"] if f else None,
            "rel_error": f["fold"]["rel_error"] if f else None, "energy_kept": f["fold"]["energy_kept"] if f else None,
            "folded": f["top1"] if f else None, "folded_bn": f["bn_recalibrated"]["top1"] if f else None,
            "cells": [top(f"fold-{tag}"), f"{f['bn_recalibrated']['top1']:.2f}" if f else "—",
                      *[top(f"{arm}-lr{lr:g}-{tag}") for lr in proto["finetune_lrs"]
                        for arm in ("finetune", "finetune-kd")],
                      top(f"scratch-{tag}"), top(f"scratch-long-{tag}")],
        })
    per_epoch = (proto["train_subset"] or 60_000) // proto["batch_size"]
    t_steps, ft_steps = round(proto["teacher_epochs"] * per_epoch), round(proto["finetune_epochs"] * per_epoch)
    ft_heads = [f"(b) fine-tune{' + distill' if kd else ''}, lr {lr:g}" for lr in proto["finetune_lrs"]
                for kd in (False, True)]
    lines = [
        f"Teacher: vanilla `{ARCH}` width {proto['width']} ({teacher['params']:,} parameters), {t_steps} steps: "
        f"**{teacher['top1']:.2f}%** top-1." if teacher else "Teacher: not trained yet.",
        "",
        "| DoF (% of generated weights) | fold rel. error | energy kept | (a) folded | (a) folded + BN re-estimate | "
        + " | ".join(ft_heads) + f" | (c) scratch, {ft_steps} steps | (c) scratch, {t_steps + ft_steps} steps |",
        "|---|" + "---:|" * (6 + len(ft_heads)),
    ]
    for r in rows:
        if r["dof"] is None:
            lines.append(f"| {100 * r['fraction']:g}% | — | — | " + " | ".join(r["cells"]) + " |")
            continue
        share = 100 * r["dof"] / r["generated_params"]
        lines.append(f"| {r['dof']:,} ({share:.1f}%) "
                     f"| {r['rel_error']:.3f} | {100 * r['energy_kept']:.1f}% | " + " | ".join(r["cells"]) + " |")
    rel_rows = []
    for fraction in args.fractions:
        tag = pct_id(fraction)
        f = recs.get(f"fold-relative-{tag}")
        if f is None:
            continue
        cells = [f"{f['top1']:.2f}", f"{f['bn_recalibrated']['top1']:.2f}"]
        cells += [f"{recs[i]['top1']:.2f}" if i in recs else "—"
                  for i in (f"finetune-relative-lr{lr:g}-{tag}" for lr in proto["finetune_lrs"])]
        def rms(layers):
            return math.sqrt(sum(r["rel_error"] ** 2 for r in layers) / len(layers))

        plain = recs.get(f"fold-{tag}")
        rel, plain_rms = rms(f["fold"]["layers"]), rms(plain["fold"]["layers"]) if plain else float("nan")
        rel_rows.append({"fraction": fraction, "dof": f["dof"], "rel_error": f["fold"]["rel_error"],
                         "rms_layer_rel_error": rel, "plain_fit_rms_layer_rel_error": plain_rms, "folded": f["top1"],
                         "folded_bn": f["bn_recalibrated"]["top1"]})
        lines_rel = (f"| {f['dof']:,} ({100 * f['dof'] / f['generated_params']:.1f}%) | {f['fold']['rel_error']:.3f} "
                     f"| {rel:.3f} (plain fit: {plain_rms:.3f}) | " + " | ".join(cells) + " |")
        rel_rows[-1]["line"] = lines_rel
    if rel_rows:
        lines += ["", "Folding with the *relative* weighting (`fold(..., weighting=\"relative\")`: every layer's relative "
                  "error counts the same), the same steps:", "",
                  "| DoF | fold rel. error (all) | RMS of the layers' rel. errors | (a) folded | (a) folded + BN re-estimate | "
                  + " | ".join(f"(b) fine-tune, lr {lr:g}" for lr in proto["finetune_lrs"]) + " |",
                  "|---|" + "---:|" * (4 + len(proto["finetune_lrs"]))]
        lines += [r.pop("line") for r in rel_rows]
    train_s = sum(r.get("train_seconds", 0.0) for r in recs.values())
    eval_s = sum(r.get("eval_seconds", 0.0) + r.get("bn_recalibrated", {}).get("eval_seconds", 0.0)
                 for r in recs.values())
    n_test = f"the first {proto['test_subset']:,}" if proto["test_subset"] else "all 10,000"
    lines += ["", f"Fine-tunes: {ft_steps} steps from the folded model after its BatchNorm re-estimate; distillation "
              f"T = {proto['distill_temperature']:g}, weight {proto['distill_weight']:g}. From scratch: the RPG model's "
              f"seeded ring, lr {proto['lr']:g}. Test top-1 in % on {n_test} test images, "
              f"seed {proto['seed']}, one run per cell; {len(recs)} runs, training {train_s / 60:.1f} min + "
              f"evaluation {eval_s / 60:.1f} min on {next(iter(recs.values()))['device'] if recs else '?'}."]
    table = "\n".join(lines) + "\n"
    (out / "table.md").write_text(table)
    (out / "summary.json").write_text(json.dumps({"protocol": proto, "fingerprint": fp, "rows": rows,
                                                  "relative_rows": rel_rows,
                                                  "runs": recs}, indent=2) + "\n")
    return table


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.summarize_only:
        run(args)
    print(summarize(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
