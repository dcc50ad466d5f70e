"""CPU kernels: ``rpg_cpu.c`` (package data beside this file) compiled on first use, called through ctypes.

Why the system C compiler and not ``torch.utils.cpp_extension``: the C file needs no torch
headers, so a plain ``cc`` builds it in about half a second, where cpp_extension compiles as C++
against the torch headers (tens of seconds on a 2-core machine) and wants ninja; and building at
first use rather than at install keeps ``pip install -e .`` a pure-Python install.  The library
is cached on disk, keyed by the source, the compiler, its flags and the CPU.

If no C compiler is available, or building/loading fails, :func:`available` is False (with one
RuntimeWarning) and the caller falls back to the pure-PyTorch reference (:mod:`rpg_hf.core.reference`).
``RPG_HF_CPU_CC`` picks the compiler (default ``$CC``, else ``cc``/``gcc``); ``RPG_HF_CACHE_DIR``
the cache (default ``$XDG_CACHE_HOME/rpg_hf`` or ``~/.cache/rpg_hf``, then a private temp dir).
The library is built with OpenMP and ``-march=native`` when the compiler can (the cache key
includes the CPU's model and flags), else with less.  With OpenMP it runs on torch's own OpenMP
thread pool (same ``libgomp.so.1``), so it neither oversubscribes the cores nor waits for torch's
spinning workers; without it (or with ``RPG_HF_CPU_OPENMP=0``), it starts
``torch.get_num_threads()`` pthreads per call.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from importlib import resources
from pathlib import Path

import torch

from rpg_hf.ops.plan import RingPlan

# The kernel sources (package data beside this file): rpg_cpu.c includes rpg_cpu_tables.h.
SOURCES = {name: resources.files(__package__).joinpath(name).read_text() for name in ("rpg_cpu.c", "rpg_cpu_tables.h")}
_FLAGS = ["-O3", "-funroll-loops", "-fPIC", "-shared", "-pthread", "-ffp-contract=off", "-fno-fast-math", "-std=gnu99"]
# tried in this order: OpenMP (shares torch's libgomp thread pool) and -march=native are optional
_VARIANTS = (["-march=native", "-fopenmp"], ["-fopenmp"], ["-march=native"], [])
_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_error: str | None = None
_tried = False


def _cpu_id() -> str:
    """Something that changes when ``-march=native`` code may not run any more."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        lines = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags"))]
        return "\n".join(sorted(set(lines)))
    except OSError:
        return platform.processor() or platform.machine()


def _cache_dirs() -> list[Path]:
    """Where the built library is cached: $RPG_HF_CACHE_DIR, else the user cache, else a private tmp dir."""
    env = os.environ.get("RPG_HF_CACHE_DIR")
    if env:
        return [Path(env)]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    return [Path(base) / "rpg_hf", Path(tempfile.gettempdir()) / f"rpg_hf-{uid}"]


def _compiler() -> str | None:
    cc = os.environ.get("RPG_HF_CPU_CC") or os.environ.get("CC") or "cc"
    return shutil.which(cc) or (shutil.which("gcc") if cc == "cc" else None)


def _compiler_version(cc: str) -> str:
    try:
        return subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def _build(cc: str, flags: list[str], target: Path) -> None:
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        for name, text in SOURCES.items():
            (Path(tmp) / name).write_text(text)
        src = Path(tmp) / "rpg_cpu.c"
        out = Path(tmp) / target.name
        proc = subprocess.run([cc, *flags, "-o", str(out), str(src)], capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"{cc} failed ({proc.returncode}): {proc.stderr.strip()[:2000]}")
        os.replace(out, target)  # atomic: concurrent builders each install a complete library


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    i64, ptr, c_int = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    lib.rpg_abi_version.restype = c_int
    lib.rpg_forward.argtypes = [c_int, ptr, i64, i64, ptr, ptr, ptr, c_int]
    lib.rpg_forward.restype = c_int
    lib.rpg_backward.argtypes = [c_int, ptr, i64, i64, ptr, ptr, ptr, c_int]
    lib.rpg_backward.restype = c_int
    if lib.rpg_abi_version() != 6:
        raise RuntimeError("unexpected rpg_cpu ABI version")
    return lib


def load() -> ctypes.CDLL | None:
    """The compiled library, building it on first use; None (with a warning) if impossible."""
    global _lib, _error, _tried
    if _tried:
        return _lib
    with _lock:
        if _tried:
            return _lib
        try:
            cc = _compiler()
            if cc is None:
                raise RuntimeError("no C compiler found (set RPG_HF_CPU_CC or CC)")
            errors = []
            version = _compiler_version(cc)
            variants = _VARIANTS
            if os.environ.get("RPG_HF_CPU_OPENMP", "1").strip() in ("0", "false", "no", "off"):
                variants = tuple(v for v in variants if "-fopenmp" not in v)
            attempts = [(_FLAGS + extra, d) for extra in variants for d in _cache_dirs()]
            for flags, cache in attempts:  # a failed build or a read-only cache: the next attempt
                key = hashlib.sha256(
                    "\0".join([*SOURCES.values(), cc, version, *flags, platform.machine(), _cpu_id()]).encode()
                ).hexdigest()[:20]
                target = cache / f"rpg_cpu_{key}.so"
                try:
                    if not target.exists():
                        _build(cc, flags, target)
                    _lib = _declare(ctypes.CDLL(str(target)))
                    break
                except (OSError, RuntimeError, subprocess.SubprocessError) as e:
                    errors.append(str(e))
            if _lib is None:
                raise RuntimeError("; ".join(errors))
        except Exception as e:  # noqa: BLE001 - any failure means: use the reference path
            _error = f"{type(e).__name__}: {e}"
            warnings.warn(
                f"rpg_hf: CPU generation kernels unavailable ({_error}); using the pure-PyTorch path",
                RuntimeWarning,
                stacklevel=3,
            )
        _tried = True
    return _lib


def available() -> bool:
    return load() is not None


def error() -> str | None:
    return _error


_DTYPES = {torch.float32: 0, torch.float64: 1}


def supports(ring: torch.Tensor, plan: RingPlan | None = None) -> bool:
    if ring.device.type != "cpu" or ring.dtype not in _DTYPES:
        return False
    if plan is not None and plan.ring_size >= 2**31 - 2**17:  # ring index + row length < 2**31
        return False
    return available()


def _threads() -> int:
    return max(1, torch.get_num_threads())


def _ptrs(tensors) -> ctypes.Array:
    return (ctypes.c_void_p * max(1, len(tensors)))(*[(t.data_ptr() if t is not None else None) for t in tensors])


def forward(ring: torch.Tensor, plan: RingPlan, dtype: torch.dtype | None = None,
            out: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, ...]:
    """Every layer of ``plan`` generated from ``ring`` (a CPU float32/float64 tensor), one tensor each.

    ``out``: contiguous tensors of the plan's shapes in the ring's dtype to write into (reused
    buffers skip the page faults of fresh memory), else new ones.
    """
    lib = load()
    assert lib is not None and ring.dtype in _DTYPES
    ring = ring.detach().contiguous()
    if out is None:
        outs = [torch.empty(shape, dtype=ring.dtype) for shape in plan.shapes]
    else:
        outs = list(out)
        if not all(o.dtype == ring.dtype and o.is_contiguous() and tuple(o.shape) == s
                   for o, s in zip(outs, plan.shapes, strict=True)):
            raise ValueError("cpu.forward: out tensors must be contiguous, in the ring's dtype and the plan's shapes")
    mult = plan.mult(ring.dtype)
    meta = plan.meta
    rc = lib.rpg_forward(_DTYPES[ring.dtype], ring.data_ptr(), plan.ring_size, plan.num_layers,
                         meta.data_ptr(), mult.data_ptr(), _ptrs(outs), _threads())
    if rc != 0:
        raise MemoryError("rpg_forward: out of memory for its scratch tables")
    if dtype is not None and dtype != ring.dtype:
        outs = [o.to(dtype) for o in outs]
    return tuple(outs)


def backward(grads, plan: RingPlan, ring_dtype: torch.dtype) -> torch.Tensor:
    """dL/dring from per-layer weight gradients (None: the layer got no gradient)."""
    lib = load()
    assert lib is not None
    acc_dtype = ring_dtype if ring_dtype in _DTYPES else torch.float32
    gs = [None if g is None else g.detach().to(acc_dtype).contiguous() for g in grads]
    acc = torch.zeros(plan.ring_size, dtype=acc_dtype)
    mult = plan.mult(acc_dtype)
    rc = lib.rpg_backward(_DTYPES[acc_dtype], acc.data_ptr(), plan.ring_size, plan.num_layers,
                          plan.meta.data_ptr(), mult.data_ptr(), _ptrs(gs), _threads())
    if rc != 0:
        raise MemoryError("rpg_backward: out of memory for its scratch tables")
    return acc if acc_dtype == ring_dtype else acc.to(ring_dtype)
