#!/usr/bin/env python
"""Training-step time of RPG models vs the vanilla timm models, interleaved in one process.

For every workload (model x DoF) the script builds the vanilla timm model and its RPG twin
(``timm.create_model("rpg_" + arch, dof=N)`` for the registered ``rpg_*`` names, else
``rpg_hf.reparameterize``) and times full training steps (zero_grad, forward, cross-entropy,
backward, SGD momentum 0.9 step).  After ``--warmup`` untimed steps of each, it runs
``--repeats`` *alternations*: one turn of ``--steps`` steps of each model, the order flipping
every pair (vanilla, rpg, rpg, vanilla, ...), so both see the same machine conditions.  Each pair
gives one ratio rpg/vanilla; the reported ratio is the **median of the per-pair ratios**, with
their min-max and inter-quartile range.  With ``--compile`` a second pass does the same for
``torch.compile(model, fullgraph=True)`` of both (after a compile warm-up); its ratio is reported
beside the eager one.

Defaults.  CPU: resnet18, 64 px, batch 32, N=45K (the CPU speed issue's workload).  CUDA: resnet18
and resnet34 at batch 256, vit_base_patch16_224 at batch 128, 224 px, N=45K and 2M, bf16 autocast,
channels_last, cudnn.benchmark.

Generation alone (every ring forward, then random weight gradients folded back) is printed beside
a memory floor measured in the same run: copying the same number of weights (``w.copy_(src)`` into
kept buffers, and ``torch.empty_like(w).copy_(w)`` into fresh memory).  The eval forward
(``--eval-batch``, no gradient, RPG through its weight cache, no ``expand()``) is timed in pairs too.

Output: one header line ``# step_time v2 | key=value | ...`` with every environment fact (device,
CPU model, thread count, torch/timm/rpg_hf versions, backend, generator version, ...), then tables
(``## eager``, ``## compiled``, ``## memory and generation``, ``## summary``), then ``CHECK OK`` /
``CHECK FAILED`` lines when ``--check`` / ``--check-compiled`` / ``--check-eval`` is given.  ``--json PATH`` writes the same numbers plus every raw turn time
(rewritten after each workload, so an interrupted run leaves what it measured).

Exit status: 0; 1 when ``--check``/``--check-compiled`` found a median ratio above the limit;
3 when a workload failed (e.g. compilation; the error is printed and recorded).

The measurement is in ``step_measure.py``, the output format in ``step_report.py`` (beside this
file); this script is the command line and the two passes.

Example:  python benchmarks/step_time.py --device cpu --check 1.02
          python benchmarks/step_time.py --device cpu --malloc keep --check 1.02
          python benchmarks/step_time.py --device cuda --compile --json step_time.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys

if __package__:
    from . import step_report as report
    from .step_measure import Bench
else:  # run as a script: its directory is sys.path[0]
    import step_report as report
    from step_measure import Bench

MIN_ALTERNATIONS = 7  # fewer: the spread of the ratio means little
# glibc keeps freed blocks below 64 MiB in the heap and trims only above 256 MiB (as jemalloc/tcmalloc
# keep memory): a step's weights, gradients and activations are then re-used instead of re-faulted
KEEP_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "67108864", "MALLOC_TRIM_THRESHOLD_": "268435456"}


def _parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--models", default=None,
                   help="comma list of timm architectures (default: CPU resnet18; CUDA resnet18,resnet34,vit_base_patch16_224)")
    p.add_argument("--dofs", default=None, help="comma list of ring sizes (default: CPU 45000; CUDA 45000,2000000)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default: CPU 32; CUDA 256 resnets, 128 ViT)")
    p.add_argument("--res", type=int, default=None, help="image size (default: CPU 64, CUDA 224)")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=None,
                   help=f"alternations (pairs of turns) timed per workload (default 11; >= {MIN_ALTERNATIONS} for a meaningful spread)")
    p.add_argument("--steps", type=int, default=None, help="training steps per turn (default: CPU 2, CUDA 5)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps of each model first (default: CPU 3, CUDA 10)")
    p.add_argument("--compile", action="store_true",
                   help="also time torch.compile(fullgraph=True) RPG vs torch.compile'd vanilla")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend (default inductor)")
    p.add_argument("--compile-mode", default=None, help="torch.compile mode (default: torch's)")
    p.add_argument("--compile-warmup", type=int, default=3,
                   help="untimed compiled steps of each model first (the first one compiles; default 3)")
    p.add_argument("--gen-reps", type=int, default=None,
                   help="generation-only repetitions (default: CPU 5, CUDA 20; 0 skips)")
    p.add_argument("--backend", choices=["auto", "torch", "cpu", "triton"], default=None,
                   help="generation backend (sets RPG_HF_BACKEND; default: the environment's or auto)")
    p.add_argument("--generator-version", type=int, default=None,
                   help="the RPG models' construction (default: rpg_hf.GENERATOR_VERSION, the default of new models)")
    p.add_argument("--eval-batch", type=int, default=8,
                   help="batch of the eval-forward comparison (RPG through its weight cache; 0 skips; default 8)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads; default: torch's)")
    p.add_argument("--malloc", choices=["stock", "keep"], default="stock",
                   help="glibc malloc for both models: 'stock' (its defaults: freed memory goes back to the OS, "
                        "and re-faulting it costs page faults every step) or 'keep' (re-run with "
                        f"{' '.join(f'{k}={v}' for k, v in KEEP_MALLOC.items())}: freed memory is kept and reused)")
    p.add_argument("--amp", choices=["auto", "on", "off"], default="auto", help="bf16 autocast (auto: on for CUDA)")
    p.add_argument("--channels-last", choices=["auto", "on", "off"], default="auto", help="(auto: on for CUDA)")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--check", type=float, default=None, metavar="MAX_RATIO",
                   help="exit 1 when any eager workload's median ratio is above MAX_RATIO")
    p.add_argument("--check-compiled", type=float, default=None, metavar="MAX_RATIO",
                   help="the same for the compiled ratios")
    p.add_argument("--check-eval", type=float, default=None, metavar="MAX_RATIO",
                   help="the same for the eval-forward ratios")
    p.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="skip workloads (and compiled passes) that would start after SECONDS")
    p.add_argument("--json", default=None, help="write the results as JSON to PATH ('-': stdout)")
    args = p.parse_args(argv)
    for name in ("repeats", "steps", "warmup", "batch", "res"):
        v = getattr(args, name)
        if v is not None and v < (0 if name == "warmup" else 1):
            p.error(f"--{name} must be positive")
    return args


def _measure(bench: Bench, row: dict, phase: str, errors: list, dump, fn, *fn_args) -> None:
    """``fn(*fn_args)`` measures one workload in ``phase``; a failure is recorded and printed (the others
    go on).  The models ``fn`` built go with its frame, then the device's cache is emptied; the JSON
    is rewritten."""
    try:
        fn(*fn_args)
    except Exception as e:  # noqa: BLE001  (report, keep measuring the others)
        report.record_failure(row, phase, f"{row['model']} dof={row['dof']}", e, errors)
    finally:
        if bench.cuda:
            bench.torch.cuda.empty_cache()
    dump()


def _eager_one(bench: Bench, vans: dict, name: str, dof: int, x, y, row: dict) -> None:
    van = vans.get(name) or vans.setdefault(name, bench.build(name, None))
    rpg = bench.build(name, dof)
    steps = {"vanilla": bench.stepper(van, x, y), "rpg": bench.stepper(rpg, x, y)}
    for k in ("vanilla", "rpg"):
        bench.timed(steps[k], bench.cfg["warmup"])
    stats = bench.alternate(steps)
    row.update({"built": rpg["how"], "backend": bench.rpg_backend(rpg["model"]), "eager": stats})
    row["vanilla_state_mib"] = bench.state_mib(van["model"], van["opt"])
    row["rpg_state_mib"] = bench.state_mib(rpg["model"], rpg["opt"])
    row["vanilla_peak_mib"] = bench.peak_mib(van, steps["vanilla"])
    row["rpg_peak_mib"] = bench.peak_mib(rpg, steps["rpg"])
    row.update(bench.generation(rpg["model"]))
    if bench.args.eval_batch:
        row["eval"] = bench.eval_forward(van["model"], rpg["model"], x[: bench.args.eval_batch])
    print(f"{report.row_prefix(row)} {report.time_cols(stats)} {row['backend']:>7}", flush=True)


def eager_pass(bench: Bench, rows: dict, errors: list, dump) -> None:
    """Every workload in eager mode: timed pairs, then memory and generation alone."""
    print("## eager: median ms per step; ratio = median of per-pair rpg/vanilla, min-max and quartiles over the pairs")
    print(f"{report.TIME_COLS} {'backend':>7}")
    print("-" * (len(report.TIME_COLS) + 8), flush=True)
    for name, dofs in bench.workloads():
        x, y = bench.data(name)
        vans: dict[str, dict] = {}  # the vanilla model, built once for all DoFs of this model
        for dof in dofs:
            batch, res = bench.shape(name)
            row = rows.setdefault((name, dof), {"model": name, "dof": dof, "batch": batch, "res": res})
            if bench.remaining() <= 0:
                row["eager"] = None
                row["eager_skipped"] = "time budget"
                print(f"{report.row_prefix(row)} skipped: time budget", flush=True)
                continue
            _measure(bench, row, "eager", errors, dump, _eager_one, bench, vans, name, dof, x, y, row)
        vans.clear()


def _compiled_one(bench: Bench, vans: dict, name: str, dof: int, row: dict) -> None:
    warmup = max(1, bench.args.compile_warmup)
    van = vans.get(name)
    if van is None:
        x, y = bench.data(name)
        van = bench.build(name, None)
        van.update(x=x, y=y)
        bench.compile(van)
        van["compile_s"] = bench.timed(bench.stepper(van, x, y), warmup)
        bench.compile_cost.append(van["compile_s"])
        vans[name] = van
    x, y = van["x"], van["y"]
    rpg = bench.build(name, dof)
    bench.compile(rpg)
    steps = {"vanilla": bench.stepper(van, x, y), "rpg": bench.stepper(rpg, x, y)}
    rpg_compile_s = bench.timed(steps["rpg"], warmup)
    bench.compile_cost.append(rpg_compile_s)
    stats = bench.alternate(steps)
    row["compiled"] = stats
    row["compile_s"] = {"vanilla": van["compile_s"], "rpg": rpg_compile_s}
    print(f"{report.row_prefix(row)} {report.time_cols(stats)} {van['compile_s']:>13.1f} {rpg_compile_s:>13.1f}",
          flush=True)


def compiled_pass(bench: Bench, rows: dict, errors: list, dump) -> None:
    """The same pairs under ``torch.compile``; round k times the k-th DoF of every model, so a time
    budget that runs out drops the later DoFs of all models rather than whole models; each vanilla
    model compiles once."""
    args = bench.args
    print(f"## compiled: torch.compile(model, fullgraph=True, dynamic=False, backend={args.compile_backend}) "
          f"for both; compile warm-up {args.compile_warmup} steps untimed; one vanilla compile per model")
    print(f"{report.TIME_COLS} {'van_compile_s':>13} {'rpg_compile_s':>13}")
    print("-" * (len(report.TIME_COLS) + 28), flush=True)
    work = bench.workloads()
    vans: dict[str, dict] = {}
    for k in range(max(len(d) for _, d in work)):
        for name, dofs in work:
            if k >= len(dofs):
                continue
            row = rows[(name, dofs[k])]
            # what this workload costs: the slowest compile so far (twice when the vanilla model
            # is not compiled yet) plus the timed turns
            guess = (max(bench.compile_cost) if bench.compile_cost else 0.0) * (1 if name in vans else 2)
            if row.get("eager"):
                s = row["eager"]
                guess += 2e-3 * (s["vanilla_ms"] + s["rpg_ms"]) * bench.cfg["steps"] * bench.cfg["repeats"]
            if bench.remaining() <= guess:
                row["compiled"], row["compiled_skipped"] = None, "time budget"
                print(f"{report.row_prefix(row)} skipped: time budget ({bench.remaining():.0f} s left, "
                      f"~{guess:.0f} s needed)", flush=True)
                dump()
                continue
            _measure(bench, row, "compiled", errors, dump, _compiled_one, bench, vans, name, dofs[k], row)
    vans.clear()
    bench.torch._dynamo.reset()


def _keep_malloc(argv) -> None:
    """Re-run this script with :data:`KEEP_MALLOC` in the environment (glibc reads it at start only)."""
    if all(os.environ.get(k) == v for k, v in KEEP_MALLOC.items()):
        return
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), *argv], {**os.environ, **KEEP_MALLOC})


def main(argv=None) -> int:
    args = _parse(argv)
    if args.malloc == "keep":
        _keep_malloc(sys.argv[1:] if argv is None else list(argv))
    if args.backend:
        os.environ["RPG_HF_BACKEND"] = args.backend
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    bench = Bench(args)
    if args.compile:
        dyn = torch._dynamo.config
        for knob in ("recompile_limit", "cache_size_limit"):  # one process compiles many models
            if hasattr(dyn, knob):
                setattr(dyn, knob, max(getattr(dyn, knob), 64))
    env = report.environment(args, bench.device, bench.amp, bench.channels_last, bench.cfg)
    head = report.header(env)
    print(head, flush=True)
    if bench.cfg["repeats"] < MIN_ALTERNATIONS:
        print(f"# note: {bench.cfg['repeats']} alternations (< {MIN_ALTERNATIONS}): the spread means little", flush=True)

    rows: dict[tuple[str, int], dict] = {}
    errors: list[str] = []

    def dump():
        report.write_json(args.json, report.payload(head, env, bench.cfg, rows, errors))

    eager_pass(bench, rows, errors, dump)
    if args.compile:
        compiled_pass(bench, rows, errors, dump)
    report.print_memory(rows)
    report.print_summary(rows, args.compile)
    rc = report.check(rows, {"eager": args.check, "compiled": args.check_compiled, "eval": args.check_eval})
    for msg in errors:
        print(f"ERROR {msg}")
    if errors and rc == 0:
        rc = 3
    dump()
    if args.json == "-":
        print(json.dumps(report.payload(head, env, bench.cfg, rows, errors), indent=1))
    return rc


if __name__ == "__main__":
    sys.exit(main())
