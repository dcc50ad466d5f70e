#!/usr/bin/env python
"""The science sweep's report: summary, claim verdicts, table, plot and README from the stored run files.

Everything here is computed from ``<results_dir>/runs/*.json`` (written by ``sweep.py`` beside this
file) and the grid YAML; nothing is typed by hand, and running it again on the same files
reproduces ``summary.json``, ``table.md``, ``README.md`` and ``dof_vs_error.png`` exactly::

    python recipes/science/report.py --config recipes/science/fashion_mnist.yaml

Each claim gets a verdict with its criterion: ``reproduced`` / ``partly reproduced`` / ``direction
only`` / ``not reproduced`` / ``not tested`` (when the finished runs cannot decide it yet).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

if __package__:
    from .verdicts import METHOD_ORDER, _pm, claims, generator_versions
else:  # run as a script: its directory is sys.path[0]
    from verdicts import METHOD_ORDER, _pm, claims, generator_versions

from rpg_hf.train.files import write_json, write_text


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
    from rpg_hf.train.models import logits_of

    with torch.inference_mode():
        x = (probe.float().unsqueeze(1) / 255.0 - mean) / std
        diff = float((logits_of(model(x)).float() - logits_of(reloaded(x)).float()).abs().max())
    size = sum(f.stat().st_size for f in directory.glob("*.safetensors"))
    with contextlib.suppress(ValueError):
        directory = directory.resolve().relative_to(Path.cwd())
    return {"checkpoint": str(directory), "checkpoint_bytes": int(size), "reload_max_abs_logit_diff": diff}


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
            "matched_rpg": rs[0].get("matched_rpg"),
            # runs recorded before version 2 existed name none: version 1 built them
            "generator_version": (int(rs[0].get("generator_version", 1)) if rs[0].get("method") != "vanilla"
                                  else None),
        })
    rank = {m: i for i, m in enumerate(METHOD_ORDER)}
    out.sort(key=lambda g: (g["arch"], rank.get(g["method"], len(rank)), g["method"], g["dof"]))
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
    versions = generator_versions(groups)

    devices = sorted({r["device"] for r in runs})
    protocol = {
        **proto,
        "optimizer": (f"SGD(momentum={proto['momentum']}, nesterov={proto['nesterov']}, "
                      f"weight_decay={proto['weight_decay']} on every parameter)"),
        "schedule": f"per-step cosine to 0 after {proto['warmup_epochs']:g} epoch(s) of linear warm-up",
        "train_samples": runs[0]["train_samples"] if runs else None,
        "test_samples": runs[0]["test_samples"] if runs else None,
        "steps_per_run": runs[0]["steps"] if runs else None,
        "seeds": list(cfg.get("seeds", [0, 1])),
        "extra_seeds": dict(cfg.get("extra_seeds") or {}),
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
        "generator_versions": versions,
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
    table = render_table(groups, fits, verdicts, protocol, summary["compute"], versions)
    write_text(results_dir / "table.md", table)
    write_text(results_dir / "README.md", render_readme(cfg, table, protocol, plot_path.name))
    return summary


def render_table(groups, fits, verdicts, protocol, compute, versions=None) -> str:
    partial = compute["runs_finished"] < compute["runs_in_grid"]
    lines = [f"**Partial sweep: {compute['runs_finished']} of {compute['runs_in_grid']} runs finished; every "
             "number and verdict below is provisional.**", ""] if partial else []
    lines += ["| arch | method | generator | width | DoF | params (network) | trainable | seeds | top-1 % (mean ± std) "
             "| train loss (last epoch) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for g in groups:
        method = g["method"] + (" (full)" if g["role"] == "full" else " (equal-DoF)" if g["role"] == "equal_dof" else "")
        version = f"v{g['generator_version']}" if g.get("generator_version") else "–"
        lines.append(f"| {g['arch']} | {method} | {version} | {g['width']} | {g['dof']:,} | {g['params']:,} | "
                     f"{g['trainable_params']:,} | {g['n']} | {_pm(g)} | {g['train_loss_mean']:.3f} |")
    lines.append("")
    for f in fits.values():
        lines.append(f"Fit ({f['arch']}, RPG runs): error = {f['coefficient']:.3g} · DoF^-{f['exponent']:.4f}, "
                     f"R² = {f['r2']:.3f} ({f['n_points']} runs, DoF {f['dof_min']:,}–{f['dof_max']:,}).  ")
    lines.append("")
    for c in verdicts:
        lines.append(f"- **Claim {c['claim']} — {c['title']}** (paper: {c['paper']}): {c['text']}")
    if versions:
        lines.append(f"- **{versions['title']}**: {versions['text']}")
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
        f"test top-1 on all {protocol.get('test_samples'):,} test images; seeds {protocol['seeds']}"
        + (f" (and {extra['seeds']} for {', '.join(extra.get('runs') or [])})"
           if (extra := protocol.get("extra_seeds") or {}).get("seeds") else "") + "; "
        f"last-stage width {protocol['width']} (stage channels {protocol['channels']}); device: {protocol['device']}.",
        "",
        f"![test error vs DoF]({plot_name})",
        "",
        table,
    ]
    return "\n".join(text)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="the sweep's grid YAML")
    p.add_argument("--results-dir", default=None, help="default: the YAML's results_dir")
    args = p.parse_args(argv)
    if __package__:
        from . import grid
    else:  # run as a script: its directory is sys.path[0]
        import grid

    cfg = yaml.safe_load(Path(args.config).read_text(encoding="utf-8"))
    results_dir = Path(args.results_dir or cfg.get("results_dir", "results/sweep"))
    proto = grid.protocol_of(cfg)
    fp = grid.fingerprint(proto)
    command = cfg.get("command") or f"accelerate launch recipes/science/sweep.py --config {args.config}"
    summary = summarize(cfg, grid.build_grid(cfg), proto, fp, results_dir, results_dir / "runs", command)
    print(f"wrote {results_dir}/summary.json, table.md, README.md, dof_vs_error.png "
          f"({summary['compute']['runs_finished']} of {summary['compute']['runs_in_grid']} runs)")
    for c in summary["claims"]:
        print(f"claim {c['claim']}: {c['verdict']}")
    if summary["generator_versions"]:
        print(f"generator versions: {summary['generator_versions']['verdict']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
