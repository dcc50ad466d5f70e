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

Every training run goes through the one training loop (``rpg_hf.train.loop.fit``) with one schedule
(SGD momentum 0.9, wd 1e-4 on everything, peak lr, linear warm-up over 10% of the steps, then
cosine to 0, batch 128, no augmentation) on the science sweep's fixed class-balanced training
subset; the test set is all 10,000 images (``rpg_hf.train.evaluate.evaluate``).  One JSON per
finished run under ``<out>/runs/`` (an interrupted run resumes where it stopped), then
``summary.json`` and ``table.md``.

    python recipes/fold_fashion_mnist.py --out results/fold          # ~25 min on 1 CPU thread
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

ARCH = "cifar_resnet18"
MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST training-set pixel statistics (as the sweep)
FINETUNE_ARMS = (("finetune", False), ("finetune-kd", True))  # (run-id prefix, distill from the teacher)


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


# --------------------------------------------------------------------------- data, models, training


def load_data(args):
    from rpg_hf.train.data import load_idx_dataset, to_tensors
    from rpg_hf.train.datasets import balanced_subset

    xtr, ytr = to_tensors(load_idx_dataset(args.data, split="train"))
    xte, yte = to_tensors(load_idx_dataset(args.data, split="test"))
    if args.train_subset:  # the science sweep's subset: seeded, class-balanced, sorted
        keep = balanced_subset(ytr, args.train_subset, seed=0, num_classes=10)
        xtr, ytr = xtr[keep], ytr[keep]
    if args.test_subset:
        xte, yte = xte[: args.test_subset], yte[: args.test_subset]
    return xtr, ytr, xte, yte


def normalise(x):
    return (x.float().unsqueeze(1) / 255.0 - MEAN) / STD


def vanilla(args):
    """The plain network, seeded: ``cifar_resnet18`` narrowed to stage channels (w, 2w, 4w, 8w)."""
    import timm

    import rpg_hf  # noqa: F401  (registers cifar_resnet*)
    from rpg_hf.train.models import narrowed_model_args

    torch.manual_seed(args.seed)
    model = timm.create_model(ARCH, pretrained=False, num_classes=10, **narrowed_model_args(8 * args.width, 1))
    model.pretrained_cfg = {**model.pretrained_cfg, "mean": (MEAN,), "std": (STD,), "input_size": (1, 28, 28)}
    return model


def evaluate(model, x, y, batch_size: int = 1000) -> dict[str, float]:
    from rpg_hf.train.evaluate import evaluate as evaluate_batches

    t0 = time.perf_counter()
    res = evaluate_batches(model, [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(x), batch_size)],
                           transform=normalise)
    return {"top1": res["top1"], "test_loss": res["loss"], "eval_seconds": time.perf_counter() - t0}


def epoch_order(n: int, epoch: int, seed: int) -> torch.Tensor:
    """The sample order of ``epoch``: the (epoch+1)-th permutation of one seeded generator (every arm's)."""
    g = torch.Generator().manual_seed(10_000 + seed)
    for _ in range(epoch):
        torch.randperm(n, generator=g)
    return torch.randperm(n, generator=g)


def train(model, xtr, ytr, steps: int, args, teacher=None, lr: float | None = None) -> dict[str, Any]:
    """``steps`` optimizer steps of ``model`` through ``rpg_hf.train.loop.fit``, distilling from ``teacher`` if given."""
    from rpg_hf.train.loop import cross_entropy, distillation_loss, fit
    from rpg_hf.train.models import logits_of
    from rpg_hf.train.optim import build_optimizer, build_scheduler

    lr = args.lr if lr is None else lr
    bs, per_epoch = args.batch_size, len(xtr) // args.batch_size
    warmup = max(1, round(0.1 * steps))
    opt = build_optimizer(model, "sgd", lr=lr, weight_decay=args.weight_decay, momentum=0.9)
    scheduler = build_scheduler(opt, schedule="cosine", total_steps=steps, warmup_steps=warmup,
                                steps_per_epoch=per_epoch)

    def batches(epoch: int, skip: int):
        order = epoch_order(len(xtr), epoch, args.seed)
        for i in range(skip, per_epoch):
            idx = order[i * bs : (i + 1) * bs]
            yield normalise(xtr[idx]), ytr[idx]

    def distill(m, x, y):
        logits = logits_of(m(x)).float()
        with torch.no_grad():
            target = logits_of(teacher(x)).float()
        return distillation_loss(logits, target, y, temperature=args.distill_temperature, weight=args.distill_weight)

    losses: list[float] = []
    state = fit(model, opt, batches, total_steps=steps, steps_per_epoch=per_epoch, scheduler=scheduler,
                loss_fn=cross_entropy if teacher is None else distill,
                on_step=lambda _state, loss: losses.append(float(loss)), progress=False)
    last = losses[-per_epoch:]
    return {"steps": steps, "lr": lr, "warmup_steps": warmup, "train_seconds": state.train_seconds,
            "train_loss_last_epoch": sum(last) / len(last)}


# --------------------------------------------------------------------------- bookkeeping


def protocol(args) -> dict[str, Any]:
    keys = ("width", "train_subset", "test_subset", "teacher_epochs", "finetune_epochs", "batch_size", "lr",
            "finetune_lrs", "weight_decay", "distill_temperature", "distill_weight", "bn_batches", "seed")
    return {"arch": ARCH, **{k: getattr(args, k) for k in keys}}


def fingerprint(proto) -> str:
    return hashlib.sha256(json.dumps(proto, sort_keys=True).encode()).hexdigest()[:12]


class Runs:
    """``<out>/runs/<run_id>.json``: a run of another protocol (fingerprint) counts as not done."""

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
        from rpg_hf.train.files import device_name, write_json

        rec = {"run_id": run_id, **rec, "fingerprint": self.fp, "protocol": self.proto, "device": device_name(),
               "torch": torch.__version__}
        write_json(self.dir / f"{run_id}.json", rec)
        print(f"[{time.strftime('%H:%M:%S')}] {run_id}: top-1 {rec.get('top1', float('nan')):.2f}%", flush=True)
        return rec


def pct_id(fraction: float) -> str:
    return f"{100 * fraction:g}pct"


# --------------------------------------------------------------------------- the experiment


def run(args) -> None:
    from rpg_hf import RPGForImageClassification
    from rpg_hf.compress.fold import config_from_model, fold, recalibrate_batchnorm
    from rpg_hf.reparam import plan_layers
    from rpg_hf.spec import RPGSpec

    torch.set_num_threads(args.threads)
    out, models = Path(args.out), Path(args.models_dir)
    models.mkdir(parents=True, exist_ok=True)
    runs = Runs(out, protocol(args))
    xtr, ytr, xte, yte = load_data(args)
    per_epoch = len(xtr) // args.batch_size
    teacher_steps, ft_steps = round(args.teacher_epochs * per_epoch), round(args.finetune_epochs * per_epoch)

    # the trained vanilla network
    teacher = vanilla(args)
    weights = models / f"teacher-{runs.fp}.pt"
    if runs.get("teacher") is None or not weights.is_file():
        info = train(teacher, xtr, ytr, teacher_steps, args)
        torch.save(teacher.state_dict(), weights)
        runs.put("teacher", {"arm": "teacher", "method": "vanilla", "params": sum(p.numel() for p in
                             teacher.parameters()), **info, **evaluate(teacher, xte, yte)})
    else:
        teacher.load_state_dict(torch.load(weights, weights_only=True))
    teacher.eval().requires_grad_(False)
    layers, _ = plan_layers(teacher, RPGSpec(dof=1))
    generated = sum(layer.numel for layer in layers)

    def fresh_rpg(dof: int):
        config = config_from_model(vanilla(args), dof, seed=args.seed)
        torch.manual_seed(args.seed)  # the free tensors' init, as the teacher's
        return RPGForImageClassification(config)

    def folded(dof: int, weighting=None, raw_eval: bool = False):
        """Folded, then BatchNorm statistics re-estimated on a few training batches (no labels, no step)."""
        model, report = fold(teacher, config_from_model(teacher, dof, seed=args.seed), weighting=weighting)
        raw = evaluate(model, xte, yte) if raw_eval else None
        order = torch.randperm(len(xtr), generator=torch.Generator().manual_seed(20_000 + args.seed))
        bs = args.batch_size
        n = recalibrate_batchnorm(model, (normalise(xtr[order[i * bs : (i + 1) * bs]]) for i in range(args.bn_batches)))
        return model, report, raw, n

    def fold_arm(run_id: str, arm: str, common: dict, weighting=None, save: Path | None = None) -> None:
        """(a): the folded model's top-1 right after folding and after the BatchNorm re-estimate."""
        if runs.get(run_id) is None:
            model, report, raw, n = folded(common["dof"], weighting, raw_eval=True)
            if save is not None:
                model.save_pretrained(save, model_card=False)
            recal = evaluate(model, xte, yte)
            runs.put(run_id, {"arm": arm, **common, **raw, "bn_recalibrated": {**recal, "batches": n},
                              "fold": report.to_dict()})

    def train_arm(run_id: str, fields: dict, make, steps: int, **train_kw) -> None:
        if runs.get(run_id) is None:
            model = make()
            info = train(model, xtr, ytr, steps, args, **train_kw)
            runs.put(run_id, {**fields, **info, **evaluate(model, xte, yte)})

    arms = []
    for fraction in args.fractions:
        dof = max(1, round(fraction * generated))
        common = {"dof": dof, "dof_fraction": dof / generated, "generated_params": generated}
        tag = pct_id(fraction)
        arms.append((tag, common))
        fold_arm(f"fold-{tag}", "folded", common, save=models / f"folded-{tag}")
        for lr in args.finetune_lrs:
            for arm, kd in FINETUNE_ARMS:
                train_arm(f"{arm}-lr{lr:g}-{tag}", {"arm": arm, "start": "folded + BN re-estimate", **common},
                          lambda dof=dof: folded(dof)[0], ft_steps, teacher=teacher if kd else None, lr=lr)
        train_arm(f"scratch-{tag}", {"arm": "scratch", **common}, lambda dof=dof: fresh_rpg(dof), ft_steps)
    if not args.no_relative:  # the fit that weighs every layer's relative error equally (fit_rings "relative")
        for tag, common in arms:
            fold_arm(f"fold-relative-{tag}", "folded (relative)", common, weighting="relative")
            for lr in args.finetune_lrs:
                train_arm(f"finetune-relative-lr{lr:g}-{tag}",
                          {"arm": "finetune (relative fold)", "start": "folded (relative) + BN re-estimate", **common},
                          lambda dof=common["dof"]: folded(dof, "relative")[0], ft_steps, lr=lr)
    if not args.no_long_scratch:
        for tag, common in arms:
            train_arm(f"scratch-long-{tag}", {"arm": "scratch-long", **common},
                      lambda dof=common["dof"]: fresh_rpg(dof), teacher_steps + ft_steps)


# --------------------------------------------------------------------------- the table


def summarize(args) -> str:
    out = Path(args.out)
    proto = protocol(args)
    fp = fingerprint(proto)
    recs = {}
    for path in sorted((out / "runs").glob("*.json")):
        rec = json.loads(path.read_text())
        if rec.get("fingerprint") == fp:
            recs[rec["run_id"]] = rec
    lrs = proto["finetune_lrs"]

    def top(run_id):
        return f"{recs[run_id]['top1']:.2f}" if run_id in recs else "—"

    def share(f):
        return f"{f['dof']:,} ({100 * f['dof'] / f['generated_params']:.1f}%)"

    def rms(layers):
        return math.sqrt(sum(r["rel_error"] ** 2 for r in layers) / len(layers))

    rows, lines_plain = [], []
    for fraction in args.fractions:
        tag = pct_id(fraction)
        f = recs.get(f"fold-{tag}")
        cells = [top(f"fold-{tag}"), f"{f['bn_recalibrated']['top1']:.2f}" if f else "—",
                 *[top(f"{arm}-lr{lr:g}-{tag}") for lr in lrs for arm, _ in FINETUNE_ARMS],
                 top(f"scratch-{tag}"), top(f"scratch-long-{tag}")]
        rows.append({"fraction": fraction, **dict.fromkeys(("dof", "generated_params", "rel_error", "energy_kept",
                                                           "folded", "folded_bn"))})
        if f:
            rows[-1].update(dof=f["dof"], generated_params=f["generated_params"], rel_error=f["fold"]["rel_error"],
                            energy_kept=f["fold"]["energy_kept"], folded=f["top1"],
                            folded_bn=f["bn_recalibrated"]["top1"])
            lines_plain.append(f"| {share(f)} | {f['fold']['rel_error']:.3f} | {100 * f['fold']['energy_kept']:.1f}% | "
                               + " | ".join(cells) + " |")
        else:
            lines_plain.append(f"| {100 * fraction:g}% | — | — | " + " | ".join(cells) + " |")
        rows[-1]["cells"] = cells
    rel_rows, lines_rel = [], []
    for fraction in args.fractions:
        tag = pct_id(fraction)
        f, plain = recs.get(f"fold-relative-{tag}"), recs.get(f"fold-{tag}")
        if f is None:
            continue
        cells = [f"{f['top1']:.2f}", f"{f['bn_recalibrated']['top1']:.2f}",
                 *[top(f"finetune-relative-lr{lr:g}-{tag}") for lr in lrs]]
        rel, plain_rms = rms(f["fold"]["layers"]), rms(plain["fold"]["layers"]) if plain else float("nan")
        rel_rows.append({"fraction": fraction, "dof": f["dof"], "rel_error": f["fold"]["rel_error"],
                         "rms_layer_rel_error": rel, "plain_fit_rms_layer_rel_error": plain_rms, "folded": f["top1"],
                         "folded_bn": f["bn_recalibrated"]["top1"]})
        lines_rel.append(f"| {share(f)} | {f['fold']['rel_error']:.3f} | {rel:.3f} (plain fit: {plain_rms:.3f}) | "
                         + " | ".join(cells) + " |")

    teacher = recs.get("teacher")
    per_epoch = (proto["train_subset"] or 60_000) // proto["batch_size"]
    t_steps, ft_steps = round(proto["teacher_epochs"] * per_epoch), round(proto["finetune_epochs"] * per_epoch)
    ft_heads = [f"(b) fine-tune{' + distill' if kd else ''}, lr {lr:g}" for lr in lrs for _, kd in FINETUNE_ARMS]
    lines = [
        f"Teacher: vanilla `{ARCH}` width {proto['width']} ({teacher['params']:,} parameters), {t_steps} steps: "
        f"**{teacher['top1']:.2f}%** top-1." if teacher else "Teacher: not trained yet.",
        "",
        "| DoF (% of generated weights) | fold rel. error | energy kept | (a) folded | (a) folded + BN re-estimate | "
        + " | ".join(ft_heads) + f" | (c) scratch, {ft_steps} steps | (c) scratch, {t_steps + ft_steps} steps |",
        "|---|" + "---:|" * (6 + len(ft_heads)),
        *lines_plain,
    ]
    if rel_rows:
        lines += ["", "Folding with the *relative* weighting (`fold(..., weighting=\"relative\")`: every layer's relative "
                  "error counts the same), the same steps:", "",
                  "| DoF | fold rel. error (all) | RMS of the layers' rel. errors | (a) folded | (a) folded + BN re-estimate | "
                  + " | ".join(f"(b) fine-tune, lr {lr:g}" for lr in lrs) + " |",
                  "|---|" + "---:|" * (4 + len(lrs)), *lines_rel]
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
                                                  "relative_rows": rel_rows, "runs": recs}, indent=2) + "\n")
    return table


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.summarize_only:
        run(args)
    print(summarize(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
