"""What ``step_time.py`` prints and writes: the environment header, the tables, the checks, the JSON.

Format ``step_time v2``: one header line ``# step_time v2 | key=value | ...`` with every
environment fact, the row tables (``## eager``, ``## compiled``, ``## memory and generation``,
``## summary``), then ``CHECK OK`` / ``CHECK FAILED`` lines; the JSON holds the same numbers and
every raw turn time.
"""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

FORMAT_VERSION = 2
PREFIX_COLS = f"{'model':<22} {'dof':>9} {'batch':>5} {'res':>4}"
TIME_COLS = (f"{PREFIX_COLS} {'vanilla_ms':>10} {'rpg_ms':>9} {'ratio':>6} {'min':>6} {'max':>6} "
             f"{'q1':>6} {'q3':>6} {'pairs':>5}")


# --------------------------------------------------------------------------- environment facts


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
    from rpg_hf.train.files import cpu_name

    env = {
        "device": device.type,
        "gpu": (f"{torch.cuda.get_device_name(device)} (cc {'.'.join(map(str, torch.cuda.get_device_capability(device)))})"
                if device.type == "cuda" else "none"),
        "cpu": f"{cpu_name()} ({_cpus()} cpus)",
        "threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "unset"),
        "malloc": (f"keep (MALLOC_MMAP_THRESHOLD_={os.environ['MALLOC_MMAP_THRESHOLD_']} "
                   f"MALLOC_TRIM_THRESHOLD_={os.environ.get('MALLOC_TRIM_THRESHOLD_', 'unset')})"
                   if os.environ.get("MALLOC_MMAP_THRESHOLD_") else "stock"),
        "torch": torch.__version__,
        "cuda": torch.version.cuda or "none",
        "triton": _version("triton") if device.type == "cuda" else "unused",
        "timm": timm.__version__,
        "rpg_hf": f"{rpg_hf.__version__} (git {_git()})",
        "python": platform.python_version(),
        "backend": requested_backend(),
        "generator_version": args.generator_version or rpg_hf.GENERATOR_VERSION,
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


def header(env: dict) -> str:
    return f"# step_time v{FORMAT_VERSION} | " + " | ".join(f"{k}={v}" for k, v in env.items())


# --------------------------------------------------------------------------- rows


def row_prefix(r: dict) -> str:
    return f"{r['model']:<22} {r['dof']:>9} {r['batch']:>5} {r['res']:>4}"


def time_cols(s: dict) -> str:
    return (f"{s['vanilla_ms']:>10.2f} {s['rpg_ms']:>9.2f} {s['ratio']:>6.3f} {s['ratio_min']:>6.3f} "
            f"{s['ratio_max']:>6.3f} {s['ratio_q1']:>6.3f} {s['ratio_q3']:>6.3f} {len(s['pair_ratios']):>5}")


def fmt_ratio(s: dict | None) -> str:
    if not s:
        return "n/a"
    return f"{s['ratio']:.3f} [{s['ratio_min']:.3f}-{s['ratio_max']:.3f}]"


def record_failure(row: dict, phase: str, what: str, err: Exception, errors: list) -> None:
    """A workload that failed in ``phase`` (eager / compiled): recorded, printed, the others go on."""
    msg = f"{what} {phase}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    errors.append(msg)
    row[phase], row[f"{phase}_error"] = None, msg
    print(f"{row_prefix(row)} ERROR {msg}", flush=True)


# --------------------------------------------------------------------------- after the passes


def print_memory(rows: dict) -> None:
    def mib(v):
        return f"{v:>9.1f}" if v is not None else f"{'n/a':>9}"

    def ms(v):
        return f"{v:>10.2f}" if v is not None else f"{'n/a':>10}"

    print("## memory and generation: MiB held between steps (params, grads, buffers, optimizer state, cached "
          "weights); CUDA peak of one step; generation alone (all rings forward / random weight grads folded back) "
          "and the memory floor: copying as many weights into kept buffers (copy_ms) and into fresh memory "
          "(alloc_copy_ms, torch.empty_like(w).copy_(w))")
    cols = (f"{PREFIX_COLS} {'van_state':>9} {'rpg_state':>9} {'van_peak':>9} {'rpg_peak':>9} {'gen_fwd_ms':>10} "
            f"{'gen_bwd_ms':>10} {'copy_ms':>8} {'alloc_copy_ms':>13} {'generated':>10}")
    print(cols)
    print("-" * len(cols))
    for r in rows.values():
        if r.get("eager"):
            print(f"{row_prefix(r)} {mib(r['vanilla_state_mib'])} {mib(r['rpg_state_mib'])} {mib(r['vanilla_peak_mib'])} "
                  f"{mib(r['rpg_peak_mib'])} {ms(r['gen_fwd_ms'])} {ms(r['gen_bwd_ms'])} {r.get('copy_ms') or 0:>8.2f} "
                  f"{r.get('alloc_copy_ms') or 0:>13.2f} {r['generated']:>10}")
    evals = [r for r in rows.values() if r.get("eval")]
    if evals:
        print("## eval forward (no gradient; RPG through its weight cache, no expand()): median ms per forward; "
              "ratio = median of per-pair rpg/vanilla")
        print(f"{PREFIX_COLS} {'vanilla_ms':>10} {'rpg_ms':>9} {'ratio':>6} {'min':>6} {'max':>6} "
              f"{'q1':>6} {'q3':>6} {'pairs':>5}".replace(f"{'batch':>5}", f"{'ebatch':>5}"))
        for r in evals:
            print(f"{r['model']:<22} {r['dof']:>9} {r['eval']['batch']:>5} {r['res']:>4} {time_cols(r['eval'])}")


def print_summary(rows: dict, compiled: bool) -> None:
    print("## summary: rpg/vanilla step-time ratio, median [min-max] over the pairs")
    cols = f"{'model':<22} {'dof':>9} {'eager':>22} {'compiled':>22} {'eval':>22}"
    print(cols)
    print("-" * len(cols))
    for r in rows.values():
        comp = fmt_ratio(r.get("compiled")) if compiled else "not run"
        if compiled and r.get("compiled_skipped"):
            comp = "skipped"
        print(f"{r['model']:<22} {r['dof']:>9} {fmt_ratio(r.get('eager')):>22} {comp:>22} {fmt_ratio(r.get('eval')):>22}")
    print(flush=True)


def check(rows: dict, limits: dict[str, float | None]) -> int:
    """``CHECK`` lines for ``{"eager": --check, "compiled": --check-compiled}``; 1 when one failed, else 0."""
    rc = 0
    for key, limit in limits.items():
        if limit is None:
            continue
        flag = "--check" if key == "eager" else f"--check-{key}"
        if key == "eval" and not any(r.get("eager") for r in rows.values()):
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
    return rc


def payload(head: str, env: dict, cfg: dict, rows: dict, errors: list) -> dict:
    return {"format": f"step_time v{FORMAT_VERSION}", "header": head, "environment": env, "config": cfg,
            "results": list(rows.values()), "errors": errors}


def write_json(path: str | None, data: dict) -> None:
    """Write ``data`` to ``path`` atomically (rewritten after each workload); ``None`` / ``'-'``: nothing."""
    if path and path != "-":
        from rpg_hf.train.files import write_json as write_atomically

        write_atomically(path, data)
