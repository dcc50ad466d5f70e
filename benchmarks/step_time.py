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

Output: one header line ``# step_time v2 | key=value | ...`` with every environment fact (device,
CPU model, thread count, torch/timm/rpg_hf versions, backend, ...), then tables (``## eager``,
``## compiled``, ``## memory and generation``, ``## summary``), then ``CHECK OK`` / ``CHECK FAILED``
lines when ``--check`` is given.  ``--json PATH`` writes the same numbers plus every raw turn time
(rewritten after each workload, so an interrupted run leaves what it measured).

Exit status: 0; 1 when ``--check``/``--check-compiled`` found a median ratio above the limit;
3 when a workload failed (e.g. compilation; the error is printed and recorded).

Example:  python benchmarks/step_time.py --device cpu --check 1.05
          python benchmarks/step_time.py --device cuda --compile --json step_time.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

FORMAT_VERSION = 2
CUDA_BATCH = {"resnet18": 256, "resnet34": 256, "vit_base_patch16_224": 128}
MIN_ALTERNATIONS = 7  # fewer: the spread of the ratio means little


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
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads; default: torch's)")
    p.add_argument("--amp", choices=["auto", "on", "off"], default="auto", help="bf16 autocast (auto: on for CUDA)")
    p.add_argument("--channels-last", choices=["auto", "on", "off"], default="auto", help="(auto: on for CUDA)")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--check", type=float, default=None, metavar="MAX_RATIO",
                   help="exit 1 when any eager workload's median ratio is above MAX_RATIO")
    p.add_argument("--check-compiled", type=float, default=None, metavar="MAX_RATIO",
                   help="the same for the compiled ratios")
    p.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="skip workloads (and compiled passes) that would start after SECONDS")
    p.add_argument("--json", default=None, help="write the results as JSON to PATH ('-': stdout)")
    args = p.parse_args(argv)
    for name in ("repeats", "steps", "warmup", "batch", "res"):
        v = getattr(args, name)
        if v is not None and v < (0 if name == "warmup" else 1):
            p.error(f"--{name} must be positive")
    return args


# --------------------------------------------------------------------------- environment facts


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "processor\t: ")) and ":" in line:
                name = line.split(":", 1)[1].strip()
                if name and not name.isdigit():
                    return name
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _git() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "n/a"
    return (rev + ("+dirty" if dirty else "")) if rev else "n/a"


def _version(module: str) -> str:
    try:
        mod = __import__(module)
    except Exception:  # noqa: BLE001  (absent or broken: say so)
        return "n/a"
    return getattr(mod, "__version__", "?")


def environment(args, device, amp: bool, channels_last: bool, cfg: dict) -> dict:
    import timm
    import torch

    import rpg_hf
    from rpg_hf.ops import requested_backend

    env = {
        "device": device.type,
        "gpu": (f"{torch.cuda.get_device_name(device)} (cc {'.'.join(map(str, torch.cuda.get_device_capability(device)))})"
                if device.type == "cuda" else "none"),
        "cpu": f"{_cpu_model()} ({_cpus()} cpus)",
        "threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "unset"),
        "torch": torch.__version__,
        "cuda": torch.version.cuda or "none",
        "triton": _version("triton") if device.type == "cuda" else "unused",
        "timm": timm.__version__,
        "rpg_hf": f"{rpg_hf.__version__} (git {_git()})",
        "python": platform.python_version(),
        "backend": requested_backend(),
        "amp": "bf16" if amp else "off",
        "channels_last": "on" if channels_last else "off",
        "cudnn_benchmark": "on" if device.type == "cuda" and torch.backends.cudnn.benchmark else "off",
        "optimizer": f"SGD(lr={args.lr}, momentum=0.9, weight_decay=1e-4)",
        "repeats": cfg["repeats"], "steps_per_turn": cfg["steps"], "warmup": cfg["warmup"],
        "compile": (f"{args.compile_backend}" + (f"/{args.compile_mode}" if args.compile_mode else "")
                    + " fullgraph") if args.compile else "off",
        "load": f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "n/a",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cmd": " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
    }
    return env


# --------------------------------------------------------------------------- statistics


def ratio_stats(vanilla: list[float], rpg: list[float]) -> dict:
    """Median of the per-pair ratios with its min-max and quartiles."""
    ratios = [r / v for v, r in zip(vanilla, rpg, strict=True)]
    if len(ratios) >= 2:
        q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    else:
        q1 = q3 = ratios[0]
    return {"vanilla_ms": statistics.median(vanilla), "rpg_ms": statistics.median(rpg),
            "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "ratio_q1": q1, "ratio_q3": q3, "pair_ratios": ratios,
            "vanilla_turns_ms": vanilla, "rpg_turns_ms": rpg}


def _fmt_ratio(s: dict | None) -> str:
    if not s:
        return "n/a"
    return f"{s['ratio']:.3f} [{s['ratio_min']:.3f}-{s['ratio_max']:.3f}]"


# --------------------------------------------------------------------------- the benchmark


class Bench:
    def __init__(self, args):
        import torch

        self.torch = torch
        self.args = args
        dev = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        if dev == "cuda" and not torch.cuda.is_available():
            raise SystemExit("--device cuda: torch sees no CUDA device")
        self.device = torch.device(dev)
        self.cuda = self.device.type == "cuda"
        if self.cuda:
            torch.backends.cudnn.benchmark = True
        self.amp = args.amp == "on" or (args.amp == "auto" and self.cuda)
        self.channels_last = args.channels_last == "on" or (args.channels_last == "auto" and self.cuda)
        self.cfg = {
            "repeats": args.repeats or 11,
            "steps": args.steps or (5 if self.cuda else 2),
            "warmup": args.warmup if args.warmup is not None else (10 if self.cuda else 3),
            "gen_reps": args.gen_reps if args.gen_reps is not None else (20 if self.cuda else 5),
        }
        self.t_start = time.perf_counter()
        self.compile_cost: list[float] = []  # seconds each compiled model's warm-up took

    # -- helpers
    def remaining(self) -> float:
        if self.args.time_budget is None:
            return float("inf")
        return self.args.time_budget - (time.perf_counter() - self.t_start)

    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize(self.device)

    def autocast(self):
        return self.torch.autocast(self.device.type, dtype=self.torch.bfloat16) if self.amp else nullcontext()

    def workloads(self):
        a = self.args
        models = [m.strip() for m in a.models.split(",")] if a.models else (
            ["resnet18", "resnet34", "vit_base_patch16_224"] if self.cuda else ["resnet18"])
        dofs = [int(float(d)) for d in a.dofs.split(",")] if a.dofs else (
            [45_000, 2_000_000] if self.cuda else [45_000])
        return [(m, dofs) for m in models if m]

    def shape(self, name: str) -> tuple[int, int]:
        res = self.args.res or (224 if self.cuda else 64)
        batch = self.args.batch or (CUDA_BATCH.get(name, 128) if self.cuda else 32)
        return batch, res

    def data(self, name: str):
        torch = self.torch
        batch, res = self.shape(name)
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(batch, 3, res, res, generator=gen).to(self.device)
        y = torch.randint(0, self.args.num_classes, (batch,), generator=gen).to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    def build(self, name: str, dof: int | None):
        """The vanilla model (dof None) or its RPG twin, on the device, with its optimizer."""
        import timm

        import rpg_hf

        torch = self.torch
        _, res = self.shape(name)
        kw = {"num_classes": self.args.num_classes}
        if "vit" in name:
            kw["img_size"] = res
        torch.manual_seed(0)
        how = "vanilla"
        if dof is None:
            model = timm.create_model(name, **kw)
        elif f"rpg_{name}" in timm.list_models("rpg_*"):
            model, how = timm.create_model(f"rpg_{name}", dof=dof, **kw), f"timm.create_model('rpg_{name}')"
        else:
            model = rpg_hf.reparameterize(timm.create_model(name, **kw), rpg_hf.RPGSpec(dof=dof))
            how = "rpg_hf.reparameterize"
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=self.args.lr, momentum=0.9, weight_decay=1e-4)
        return {"model": model, "opt": opt, "run": model, "how": how}

    def stepper(self, m: dict, x, y):
        torch = self.torch

        def step():
            m["opt"].zero_grad(set_to_none=True)
            with self.autocast():
                loss = torch.nn.functional.cross_entropy(m["run"](x), y)
            loss.backward()
            m["opt"].step()

        return step

    def turn(self, step, n: int) -> float:
        """Mean ms per step over ``n`` consecutive steps (synchronised before and after)."""
        self.sync()
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        self.sync()
        return (time.perf_counter() - t0) * 1e3 / n

    def alternate(self, steps: dict) -> dict:
        v, r = [], []
        for i in range(self.cfg["repeats"]):
            order = ("vanilla", "rpg") if i % 2 == 0 else ("rpg", "vanilla")
            t = {k: None for k in order}
            for k in order:
                t[k] = self.turn(steps[k], self.cfg["steps"])
            v.append(t["vanilla"])
            r.append(t["rpg"])
        return ratio_stats(v, r)

    def rpg_backend(self, model) -> str:
        from rpg_hf import get_generator
        from rpg_hf.ops import select_backend
        from rpg_hf.ops.plan import get_plan

        gen = get_generator(model)
        return "+".join(sorted({select_backend(r, get_plan(gen.slots[i], r.numel())) for i, r in enumerate(gen.rings)}))

    # -- memory and generation (eager pass)
    def state_mib(self, model, opt) -> float:
        """Bytes held between steps: parameters, gradients, buffers, optimizer state, RPG's cached weights
        and reused output buffers."""
        torch = self.torch
        seen, total = set(), 0

        def add(t):
            nonlocal total
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen:
                seen.add(t.untyped_storage().data_ptr())
                total += t.untyped_storage().nbytes()

        for t in list(model.parameters()) + list(model.buffers()):
            add(t)
            add(t.grad)
        for state in opt.state.values():
            for v in state.values():
                add(v)
        gen = getattr(model, "rpg", None)
        for entry in getattr(gen, "_cache", None) or []:  # eval cache: weights kept with a ring copy
            if entry is not None:
                add(entry.ring)
                for w in entry.weights:
                    add(w)
        for hub in getattr(gen, "_hubs", None) or []:  # training: the CPU output buffers kept for reuse
            for pool in (hub.buffers.values() if hub is not None else ()):
                for buf, _ in pool:
                    add(buf)
        return total / 2**20

    def peak_mib(self, m: dict, step) -> float | None:
        if not self.cuda:
            return None
        torch = self.torch
        self.sync()
        before = torch.cuda.memory_allocated(self.device) / 2**20
        torch.cuda.reset_peak_memory_stats(self.device)
        step()
        self.sync()
        return torch.cuda.max_memory_allocated(self.device) / 2**20 - before + self.state_mib(m["model"], m["opt"])

    def generation(self, model) -> dict:
        """Generation alone: every ring forward, then random weight gradients folded back."""
        torch = self.torch
        from rpg_hf import get_generator
        from rpg_hf.ops import expand_ring

        gen = get_generator(model)
        reps = self.cfg["gen_reps"]
        out = {"generated": sum(s.numel for ss in gen.slots for s in ss), "gen_fwd_ms": None, "gen_bwd_ms": None}
        if reps <= 0:
            return out
        g = torch.Generator(device=self.device).manual_seed(0)
        grads = [[torch.randn(s.shape, device=self.device, generator=g) for s in gen.slots[i]] for i in range(len(gen.rings))]
        fwd, bwd = [], []
        for rep in range(reps + 1):
            self.sync()
            t0 = time.perf_counter()
            outs = [expand_ring(r, gen.slots[i]) for i, r in enumerate(gen.rings)]
            self.sync()
            t1 = time.perf_counter()
            torch.autograd.backward([w for ws in outs for w in ws], [gg for gs in grads for gg in gs])
            self.sync()
            t2 = time.perf_counter()
            if rep:  # the first repetition warms up
                fwd.append((t1 - t0) * 1e3)
                bwd.append((t2 - t1) * 1e3)
            del outs
        for r in gen.rings:
            r.grad = None
        out["gen_fwd_ms"], out["gen_bwd_ms"] = statistics.median(fwd), statistics.median(bwd)
        return out

    # -- passes
    def compile(self, m: dict) -> None:
        """Run ``m`` through ``torch.compile`` from now on (it compiles at its first step)."""
        torch = self.torch
        a = self.args
        kw = {"fullgraph": True, "dynamic": False, "backend": a.compile_backend}
        if a.compile_mode:
            kw["mode"] = a.compile_mode
        m["run"] = torch.compile(m["model"], **kw)

    def warm(self, step, n: int) -> float:
        self.sync()
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        self.sync()
        return time.perf_counter() - t0


def _record_failure(row: dict, phase: str, what: str, err: Exception, errors: list) -> None:
    """A workload that failed in ``phase`` (eager / compiled): recorded, printed, the others go on."""
    msg = f"{what} {phase}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    errors.append(msg)
    row[phase], row[f"{phase}_error"] = None, msg
    print(f"{_row_prefix(row)} ERROR {msg}", flush=True)


def _row_prefix(r: dict) -> str:
    return f"{r['model']:<22} {r['dof']:>9} {r['batch']:>5} {r['res']:>4}"


PREFIX_COLS = f"{'model':<22} {'dof':>9} {'batch':>5} {'res':>4}"
TIME_COLS = (f"{PREFIX_COLS} {'vanilla_ms':>10} {'rpg_ms':>9} {'ratio':>6} {'min':>6} {'max':>6} "
             f"{'q1':>6} {'q3':>6} {'pairs':>5}")


def _time_cols(s: dict) -> str:
    return (f"{s['vanilla_ms']:>10.2f} {s['rpg_ms']:>9.2f} {s['ratio']:>6.3f} {s['ratio_min']:>6.3f} "
            f"{s['ratio_max']:>6.3f} {s['ratio_q1']:>6.3f} {s['ratio_q3']:>6.3f} {len(s['pair_ratios']):>5}")


def main(argv=None) -> int:
    args = _parse(argv)
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
    env = environment(args, bench.device, bench.amp, bench.channels_last, bench.cfg)
    header = f"# step_time v{FORMAT_VERSION} | " + " | ".join(f"{k}={v}" for k, v in env.items())
    print(header, flush=True)
    if bench.cfg["repeats"] < MIN_ALTERNATIONS:
        print(f"# note: {bench.cfg['repeats']} alternations (< {MIN_ALTERNATIONS}): the spread means little", flush=True)

    rows: dict[tuple[str, int], dict] = {}
    errors: list[str] = []

    def dump():
        if not args.json:
            return
        payload = {"format": f"step_time v{FORMAT_VERSION}", "header": header, "environment": env,
                   "config": bench.cfg, "results": list(rows.values()), "errors": errors}
        text = json.dumps(payload, indent=1)
        if args.json == "-":
            return
        tmp = f"{args.json}.tmp"
        with open(tmp, "w") as f:
            f.write(text + "\n")
        os.replace(tmp, args.json)

    # ---------------------------------------------------------------- pass 1: eager
    print("## eager: median ms per step; ratio = median of per-pair rpg/vanilla, min-max and quartiles over the pairs")
    print(f"{TIME_COLS} {'backend':>7}")
    print("-" * (len(TIME_COLS) + 8), flush=True)
    for name, dofs in bench.workloads():
        x, y = bench.data(name)
        van = None
        for dof in dofs:
            batch, res = bench.shape(name)
            row = rows.setdefault((name, dof), {"model": name, "dof": dof, "batch": batch, "res": res})
            if bench.remaining() <= 0:
                row["eager"] = None
                row["eager_skipped"] = "time budget"
                print(f"{_row_prefix(row)} skipped: time budget", flush=True)
                continue
            try:
                if van is None:
                    van = bench.build(name, None)
                rpg = bench.build(name, dof)
                steps = {"vanilla": bench.stepper(van, x, y), "rpg": bench.stepper(rpg, x, y)}
                for k in ("vanilla", "rpg"):
                    bench.warm(steps[k], bench.cfg["warmup"])
                stats = bench.alternate(steps)
                row.update({"built": rpg["how"], "backend": bench.rpg_backend(rpg["model"]), "eager": stats})
                row["vanilla_state_mib"] = bench.state_mib(van["model"], van["opt"])
                row["rpg_state_mib"] = bench.state_mib(rpg["model"], rpg["opt"])
                row["vanilla_peak_mib"] = bench.peak_mib(van, steps["vanilla"])
                row["rpg_peak_mib"] = bench.peak_mib(rpg, steps["rpg"])
                row.update(bench.generation(rpg["model"]))
                print(f"{_row_prefix(row)} {_time_cols(stats)} {row['backend']:>7}", flush=True)
            except Exception as e:  # noqa: BLE001  (report, keep measuring the others)
                _record_failure(row, "eager", f"{name} dof={dof}", e, errors)
            finally:
                rpg = steps = None
                if bench.cuda:
                    torch.cuda.empty_cache()
            dump()
        van = None

    # ---------------------------------------------------------------- pass 2: compiled
    if args.compile:
        print(f"## compiled: torch.compile(model, fullgraph=True, dynamic=False, backend={args.compile_backend}) "
              f"for both; compile warm-up {args.compile_warmup} steps untimed; one vanilla compile per model")
        print(f"{TIME_COLS} {'van_compile_s':>13} {'rpg_compile_s':>13}")
        print("-" * (len(TIME_COLS) + 28), flush=True)
        # round k times the k-th DoF of every model, so a time budget that runs out drops the
        # later DoFs of all models rather than whole models; each vanilla model compiles once
        work = bench.workloads()
        vans: dict[str, dict] = {}
        for k in range(max(len(d) for _, d in work)):
            for name, dofs in work:
                if k >= len(dofs):
                    continue
                dof = dofs[k]
                row = rows[(name, dof)]
                van = vans.get(name)
                # what this workload costs: the slowest compile so far (twice when the vanilla model
                # is not compiled yet) plus the timed turns
                guess = (max(bench.compile_cost) if bench.compile_cost else 0.0) * (1 if van else 2)
                if row.get("eager"):
                    s = row["eager"]
                    guess += 2e-3 * (s["vanilla_ms"] + s["rpg_ms"]) * bench.cfg["steps"] * bench.cfg["repeats"]
                if bench.remaining() <= guess:
                    row["compiled"], row["compiled_skipped"] = None, "time budget"
                    print(f"{_row_prefix(row)} skipped: time budget ({bench.remaining():.0f} s left, ~{guess:.0f} s needed)",
                          flush=True)
                    dump()
                    continue
                rpg = steps = None
                try:
                    if van is None:
                        x, y = bench.data(name)
                        van = bench.build(name, None)
                        van.update(x=x, y=y)
                        bench.compile(van)
                        van["compile_s"] = bench.warm(bench.stepper(van, x, y), max(1, args.compile_warmup))
                        bench.compile_cost.append(van["compile_s"])
                        vans[name] = van
                    x, y = van["x"], van["y"]
                    rpg = bench.build(name, dof)
                    bench.compile(rpg)
                    steps = {"vanilla": bench.stepper(van, x, y), "rpg": bench.stepper(rpg, x, y)}
                    rpg_compile_s = bench.warm(steps["rpg"], max(1, args.compile_warmup))
                    bench.compile_cost.append(rpg_compile_s)
                    stats = bench.alternate(steps)
                    row["compiled"] = stats
                    row["compile_s"] = {"vanilla": van["compile_s"], "rpg": rpg_compile_s}
                    print(f"{_row_prefix(row)} {_time_cols(stats)} {van['compile_s']:>13.1f} {rpg_compile_s:>13.1f}",
                          flush=True)
                except Exception as e:  # noqa: BLE001  (report, keep measuring the others)
                    _record_failure(row, "compiled", f"{name} dof={dof}", e, errors)
                finally:
                    rpg = steps = None
                    if bench.cuda:
                        torch.cuda.empty_cache()
                dump()
        vans.clear()
        torch._dynamo.reset()

    # ---------------------------------------------------------------- memory, summary, checks
    def mib(v):
        return f"{v:>9.1f}" if v is not None else f"{'n/a':>9}"

    def ms(v):
        return f"{v:>10.2f}" if v is not None else f"{'n/a':>10}"

    print("## memory and generation: MiB held between steps (params, grads, buffers, optimizer state, cached "
          "weights); CUDA peak of one step; generation alone (all rings forward / random weight grads folded back)")
    cols = f"{PREFIX_COLS} {'van_state':>9} {'rpg_state':>9} {'van_peak':>9} {'rpg_peak':>9} {'gen_fwd_ms':>10} {'gen_bwd_ms':>10} {'generated':>10}"
    print(cols)
    print("-" * len(cols))
    for r in rows.values():
        if r.get("eager"):
            print(f"{_row_prefix(r)} {mib(r['vanilla_state_mib'])} {mib(r['rpg_state_mib'])} {mib(r['vanilla_peak_mib'])} "
                  f"{mib(r['rpg_peak_mib'])} {ms(r['gen_fwd_ms'])} {ms(r['gen_bwd_ms'])} {r['generated']:>10}")

    print("## summary: rpg/vanilla step-time ratio, median [min-max] over the pairs")
    cols = f"{'model':<22} {'dof':>9} {'eager':>22} {'compiled':>22}"
    print(cols)
    print("-" * len(cols))
    for r in rows.values():
        comp = _fmt_ratio(r.get("compiled")) if args.compile else "not run"
        if args.compile and r.get("compiled_skipped"):
            comp = "skipped"
        print(f"{r['model']:<22} {r['dof']:>9} {_fmt_ratio(r.get('eager')):>22} {comp:>22}")
    print(flush=True)

    rc = 0
    for flag, key, limit in (("--check", "eager", args.check), ("--check-compiled", "compiled", args.check_compiled)):
        if limit is None:
            continue
        bad = [r for r in rows.values() if r.get(key) and r[key]["ratio"] > limit]
        missing = [r for r in rows.values() if not r.get(key)]
        for r in bad:
            print(f"CHECK FAILED ({flag} {limit:g}): {r['model']} dof={r['dof']} {key} median ratio "
                  f"{r[key]['ratio']:.3f} > {limit:g} (pairs {r[key]['ratio_min']:.3f}-{r[key]['ratio_max']:.3f})")
        for r in missing:
            print(f"CHECK FAILED ({flag} {limit:g}): {r['model']} dof={r['dof']} has no {key} measurement")
        if bad or missing:
            rc = 1
        else:
            print(f"CHECK OK ({flag} {limit:g}): every {key} median ratio <= {limit:g}")
    for msg in errors:
        print(f"ERROR {msg}")
    if errors and rc == 0:
        rc = 3
    dump()
    if args.json == "-":
        print(json.dumps({"format": f"step_time v{FORMAT_VERSION}", "header": header, "environment": env,
                          "config": bench.cfg, "results": list(rows.values()), "errors": errors}, indent=1))
    return rc


if __name__ == "__main__":
    sys.exit(main())
