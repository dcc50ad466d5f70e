#!/usr/bin/env python
"""The RPG science sweep: test accuracy against degrees of freedom (DoF), a grid on the one training loop.

Why this script: the paper's claims (Wang et al., WACV 2023) are statements about *many* runs —
a log-linear DoF→accuracy law, equal-DoF comparisons against narrowed vanilla networks, and
ablations of the permutation / sign flip / ring scope.  One YAML file describes the grid; this
script trains every point with one identical protocol through :func:`rpg_hf.train.loop.fit`,
evaluates with :func:`rpg_hf.train.evaluate.evaluate`, and writes one JSON per finished run.
``report.py`` (beside this file) turns the stored run files into the summary, table, plot and
README — re-running it reproduces them exactly.

Run (Fashion-MNIST from ``apt-get install -y dataset-fashion-mnist``; ``--multi_gpu`` is Accelerate's
flag for several processes, CPU workers included), in the background::

    accelerate launch --multi_gpu --num_processes 2 --num_cpu_threads_per_process 1 \\
        recipes/science/sweep.py --config recipes/science/fashion_mnist.yaml

**Resumable.**  Finished runs (a JSON with the protocol's fingerprint) are skipped.  A run in
progress writes its state (model, optimizer momentum, step) to a safetensors file at the end of
every epoch; an interrupted run restarts from its last finished epoch, bit-identically, because
each epoch's batch order and augmentation are a pure function of ``(seed, epoch)``.  Processes
claim runs one at a time through ``claims/<run_id>`` files (:mod:`rpg_hf.train.claims`: created
exclusively; a claim whose process is gone is taken over), so any number of processes — and a
later session — share the remaining grid without a fixed assignment.

Grid vocabulary (YAML): ``width`` — the last-stage width of every network (stage channels
``narrowed_channels(width)`` = w/8, w/4, w/2, w); ``rpg`` — RPG models at given ring sizes;
``vanilla_full`` — the plain networks at that width; ``equal_dof_vanilla`` — for the listed RPG
DoFs, the vanilla network narrowed to the RPG model's trainable parameters by
:func:`rpg_hf.train.models.match_vanilla_width` (the demo's rule); ``ablations`` — RPG variants at
one DoF.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from rpg_hf.train.claims import claim
from rpg_hf.train.files import device_name, write_json

if __package__:
    from . import report
    from .grid import build_grid, fingerprint, protocol_of
else:  # run as a script: its directory is sys.path[0]
    import report
    from grid import build_grid, fingerprint, protocol_of

DEFAULT_CONFIG = "recipes/science/fashion_mnist.yaml"


# --------------------------------------------------------------------------- data


def load_data(cfg: Mapping[str, Any], root: str | None):
    """(train images, train labels, test images, test labels, class names) as uint8 / int64 tensors."""
    from rpg_hf.train.data import load_idx_dataset, to_tensors
    from rpg_hf.train.datasets import balanced_subset

    data = cfg.get("dataset") or {}
    train_ds = load_idx_dataset(root or data.get("root"), split="train")
    test_ds = load_idx_dataset(root or data.get("root"), split="test")
    (xtr, ytr), (xte, yte) = to_tensors(train_ds), to_tensors(test_ds)
    if data.get("train_subset"):  # a fixed class-balanced subset, the same for every run
        keep = balanced_subset(ytr, int(data["train_subset"]), seed=int(data.get("subset_seed", 0)),
                               num_classes=int(data.get("num_classes", 10)))
        xtr, ytr = xtr[keep], ytr[keep]
    return xtr, ytr, xte, yte, list(train_ds.features["label"].names)


def augment(x, how: str, g):
    """Batch augmentation of uint8 N×H×W: 2-px-padded random crops and/or horizontal flips (seeded by ``g``)."""
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


def build_model(run: Mapping[str, Any], cfg: Mapping[str, Any], names: Sequence[str]):
    from rpg_hf.train.models import build_model, narrowed_model_args

    data = cfg.get("dataset") or {}
    method = "vanilla" if run["method"] == "vanilla" else "rpg"
    variant = {k: run[k] for k in ("permute", "sign_flip") if k in run}
    # runs recorded before generator version 2 existed name none: they were built with version 1
    variant["generator_version"] = int(run.get("generator_version", 1))
    return build_model(method, run["arch"], num_labels=len(names), id2label=dict(enumerate(names)),
                       dof=int(run["dof"]) if method == "rpg" else 1, seed=int(run["seed"]),
                       scope=run.get("scope", "global"),
                       model_args=narrowed_model_args(run["width"], int(data.get("in_chans", 1))),
                       image_size=int(data.get("image_size", 28)), crop_pct=1.0, mean=[float(data.get("mean", 0.5))],
                       std=[float(data.get("std", 0.5))], **variant)


def _save_partial(path: Path, model, optimizer, step: int, fp: str) -> None:
    """The run's state after a finished epoch, as safetensors (the momentum buffers, by parameter index)."""
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    for i, s in optimizer.state_dict()["state"].items():
        if s.get("momentum_buffer") is not None:
            tensors[f"momentum.{i}"] = s["momentum_buffer"].contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(tensors, tmp, metadata={"step": str(step), "fingerprint": fp})
    os.replace(tmp, path)


def _load_partial(path: Path, model, optimizer, fp: str) -> int:
    """Restore a saved epoch state; returns its step (0 when there is none or it is of another protocol)."""
    from safetensors import safe_open

    if not path.is_file():
        return 0
    with safe_open(path, "pt") as f:
        meta = f.metadata()
        if meta.get("fingerprint") != fp:
            return 0
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118  (safe_open has no __iter__)
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state = optimizer.state_dict()
    state["state"] = {int(k[9:]): {"momentum_buffer": v} for k, v in tensors.items() if k.startswith("momentum.")}
    optimizer.load_state_dict(state)
    return int(meta["step"])


def train_run(run: Mapping[str, Any], cfg: Mapping[str, Any], proto: Mapping[str, Any], data, device, *,
              work_dir: Path, save_dir: Path | None, command: str, fp: str, progress: bool) -> dict[str, Any]:
    """Train and evaluate one grid point (resuming from its last finished epoch); return its record."""
    import torch

    from rpg_hf.train.datasets import mix_seed
    from rpg_hf.train.evaluate import evaluate
    from rpg_hf.train.loop import TrainState, fit
    from rpg_hf.train.models import model_summary
    from rpg_hf.train.optim import build_optimizer, build_scheduler

    xtr, ytr, xte, yte, names = data
    dcfg = cfg.get("dataset") or {}
    mean, std = float(dcfg.get("mean", 0.5)), float(dcfg.get("std", 0.5))
    seed = int(run["seed"])
    torch.manual_seed(seed)  # the free tensors' init (timm) of this seed
    model = build_model(run, cfg, names).to(device)
    params = int(sum(p.numel() for p in model.parameters()))
    if params != run["trainable_params"]:
        raise RuntimeError(f"{run['run_id']}: built model has {params} trainable parameters, grid says "
                           f"{run['trainable_params']}")
    bs, epochs = int(proto["batch_size"]), int(proto["epochs"])
    spe = -(-len(xtr) // bs)
    optimizer = build_optimizer(model, "sgd", lr=proto["lr"], weight_decay=proto["weight_decay"],
                                momentum=proto["momentum"], nesterov=proto["nesterov"])
    partial = work_dir / "partial" / f"{run['run_id']}.safetensors"
    state = TrainState(step=_load_partial(partial, model, optimizer, fp))
    resumed_from = state.step
    scheduler = build_scheduler(optimizer, schedule="cosine", total_steps=spe * epochs,
                                warmup_steps=round(proto["warmup_epochs"] * spe), steps_per_epoch=spe)
    for _ in range(state.step):  # the schedule's position after the restored steps (a LambdaLR step is cheap)
        scheduler.step()
    last_losses: list[float] = []

    def batches(epoch: int, skip: int):
        g = torch.Generator().manual_seed(mix_seed(seed, epoch))  # order + augmentation: pure in (seed, epoch)
        order = torch.randperm(len(xtr), generator=g).to(xtr.device)
        for i in range(spe):
            idx = order[i * bs : (i + 1) * bs]
            x = (augment(xtr[idx], proto["augmentation"], g).float().unsqueeze(1) / 255.0 - mean) / std
            if i >= skip:
                yield x, ytr[idx]

    def on_step(st: TrainState, loss) -> None:
        last_losses.append(float(loss))
        del last_losses[:-spe]
        if st.step % spe == 0 and st.step < spe * epochs:
            _save_partial(partial, model, optimizer, st.step, fp)

    fit(model, optimizer, batches, total_steps=spe * epochs, steps_per_epoch=spe, scheduler=scheduler, state=state,
        on_step=on_step, progress=progress, desc=run["run_id"])
    t1 = time.perf_counter()
    eb = int(proto["eval_batch_size"])
    test = [(xte[i : i + eb], yte[i : i + eb]) for i in range(0, len(xte), eb)]
    res = evaluate(model, test, transform=lambda x: (x.float().unsqueeze(1) / 255.0 - mean) / std)
    record = {
        **{k: run[k] for k in run if k not in ("run_id",)}, "run_id": run["run_id"],
        "top1": round(res["top1"] * res["n"] / 100) / res["n"], "top5": round(res["top5"] * res["n"] / 100) / res["n"], "test_loss": res["loss"], "epochs": epochs, "steps": spe * epochs,
        "train_seconds": round(state.train_seconds, 2), "eval_seconds": round(time.perf_counter() - t1, 2),
        "resumed_from_step": resumed_from,
        "train_loss_last_epoch": sum(last_losses) / len(last_losses),
        "train_samples": len(xtr), "test_samples": len(xte), "device": device_name(device),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "summary": model_summary(model),
    }
    if save_dir is not None and run["method"] != "vanilla":
        record.update(report.save_rpg(model, run, save_dir / run["run_id"], record["top1"], dcfg, command,
                                      xte[:256], mean, std))
    partial.unlink(missing_ok=True)
    return record


def finished(runs_dir: Path, run: Mapping[str, Any], fp: str) -> bool:
    path = runs_dir / f"{run['run_id']}.json"
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("protocol_fingerprint") == fp
    except (OSError, json.JSONDecodeError):
        return False


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=DEFAULT_CONFIG, help="grid YAML")
    p.add_argument("--data", default=None, help="IDX directory (default: the YAML's dataset.root, else Debian's)")
    p.add_argument("--results-dir", default=None, help="runs/, summary, plot and table (default: YAML results_dir)")
    p.add_argument("--models-dir", default=None, help="ring-only checkpoints and partial-run states "
                                                      "(default: YAML models_dir)")
    p.add_argument("--no-save-models", action="store_true", help="do not save the RPG runs' checkpoints")
    p.add_argument("--list", action="store_true", help="print the grid (run id, DoF, params) and exit")
    p.add_argument("--max-runs", type=int, default=None, help="train at most this many runs (per process)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: as launched)")
    p.add_argument("--cpu", action="store_true", help="force the CPU even when a GPU is present")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = yaml.safe_load(Path(args.config).read_text(encoding="utf-8"))
    results_dir = Path(args.results_dir or cfg.get("results_dir", "results/sweep"))
    runs_dir = results_dir / "runs"
    work_dir = Path(args.models_dir or cfg.get("models_dir", "outputs/science"))
    command = cfg.get("command") or f"accelerate launch recipes/science/sweep.py --config {args.config}"
    proto = protocol_of(cfg)
    fp = fingerprint(proto)
    grid = build_grid(cfg)
    if args.list:
        for r in grid:
            print(f"{r['run_id']:<52} dof={r['dof']:>9,} params={r['params']:>9,} trainable={r['trainable_params']:>9,}")
        print(f"{len(grid)} runs; protocol fingerprint {fp}")
        return 0

    import torch
    from accelerate import PartialState

    if args.threads:
        torch.set_num_threads(args.threads)
    # Runs are independent: each process trains whole runs on its own device and nothing is all-reduced.
    dist = PartialState(cpu=args.cpu or not torch.accelerator.is_available())
    rank, world, device = dist.process_index, dist.num_processes, dist.device
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()  # save_pretrained writes nothing on rank > 0 of a live group

    def log(*parts: Any) -> None:
        print(f"[rank {rank}/{world}]", *parts, flush=True)

    pending = [r for r in grid if not finished(runs_dir, r, fp)]
    log(f"{len(grid)} runs in the grid, {len(grid) - len(pending)} finished, {len(pending)} pending; protocol {fp}")
    data, done = None, 0
    for run in pending:
        if args.max_runs is not None and done >= args.max_runs:
            break
        if finished(runs_dir, run, fp) or not claim(work_dir / "claims", run["run_id"]):
            continue
        try:
            if data is None:
                xtr, ytr, xte, yte, names = load_data(cfg, args.data)
                data = (xtr.to(device), ytr.to(device), xte.to(device), yte.to(device), names)
            t0 = time.time()
            rec = train_run(run, cfg, proto, data, device, work_dir=work_dir,
                            save_dir=None if args.no_save_models else work_dir / "models", command=command, fp=fp,
                            progress=sys.stderr.isatty())
            rec.update(protocol_fingerprint=fp, finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
            write_json(runs_dir / f"{run['run_id']}.json", rec)
            done += 1
            log(f"{run['run_id']}: top-1 {100 * rec['top1']:.2f}%  train {rec['train_seconds']:.0f}s, "
                f"total {time.time() - t0:.0f}s")
        finally:
            (work_dir / "claims" / run["run_id"]).unlink(missing_ok=True)
    if all(finished(runs_dir, r, fp) for r in grid):
        summary = report.summarize(cfg, grid, proto, fp, results_dir, runs_dir, command)
        log(f"wrote {results_dir / 'summary.json'} ({summary['compute']['runs_finished']} runs)")
    else:
        log("runs remain (in other processes, or for a later session); "
            f"`python recipes/science/report.py --config {args.config}` reports what is finished")
    return 0


if __name__ == "__main__":
    sys.exit(main())
