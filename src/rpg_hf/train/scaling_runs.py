"""Run records of a DoF sweep: read from single-run JSON files, sweep summaries or lists, validated.

A run record is a JSON object with at least :data:`REQUIRED_RUN_KEYS` (``arch, method, dof,
top1``; ``top1`` a fraction in ``[0, 1]``); extras such as ``params, seed, epochs,
train_seconds, device`` are kept.  :func:`load_runs` reads them from paths and globs.
"""

from __future__ import annotations

import glob
import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["REQUIRED_RUN_KEYS", "load_runs", "validate_run"]

#: Keys every run record must carry. Optional extras: params, seed, epochs, train_seconds, device, ...
REQUIRED_RUN_KEYS: tuple[str, ...] = ("arch", "method", "dof", "top1")

_GLOB_CHARS = frozenset("*?[")


def validate_run(run: Any, where: str) -> dict[str, Any]:
    """A copy of ``run`` after checking its required keys, their types and ranges (``where`` names it in errors)."""
    if not isinstance(run, Mapping):
        raise ValueError(f"{where}: expected a JSON object for a run, got {type(run).__name__}")
    missing = [k for k in REQUIRED_RUN_KEYS if k not in run]
    if missing:
        raise KeyError(
            f"{where}: run is missing required key(s) {missing} (required: {list(REQUIRED_RUN_KEYS)})"
        )
    for key in ("arch", "method"):
        if not isinstance(run[key], str) or not run[key]:
            raise ValueError(f"{where}: key {key!r} must be a non-empty string, got {run[key]!r}")
    for key in ("dof", "top1"):
        v = run[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{where}: key {key!r} must be a finite number, got {v!r}")
    if run["dof"] <= 0:
        raise ValueError(f"{where}: key 'dof' must be positive, got {run['dof']!r}")
    if not 0.0 <= run["top1"] <= 1.0:
        hint = " (looks like a percentage; store fractions)" if 1.0 < run["top1"] <= 100.0 else ""
        raise ValueError(f"{where}: key 'top1' must lie in [0, 1], got {run['top1']!r}{hint}")
    return dict(run)


def _runs_from_object(obj: Any, where: str) -> list[dict[str, Any]]:
    """Runs from a parsed JSON value: a summary ``{"runs": [...]}``, a single run, or a list of runs."""
    if isinstance(obj, Mapping) and "runs" in obj:
        runs = obj["runs"]
        if not isinstance(runs, list):
            raise ValueError(f"{where}: summary key 'runs' must be a list, got {type(runs).__name__}")
        return [validate_run(r, f"{where}: runs[{i}]") for i, r in enumerate(runs)]
    if isinstance(obj, Mapping):
        return [validate_run(obj, where)]
    if isinstance(obj, list):
        return [validate_run(r, f"{where}: [{i}]") for i, r in enumerate(obj)]
    raise ValueError(
        f"{where}: expected a run object, a summary object with a 'runs' list, or a list of runs; "
        f"got {type(obj).__name__}"
    )


def _expand_paths(items: Iterable[str | os.PathLike[str]]) -> list[Path]:
    out: list[Path] = []
    seen: set[Path] = set()
    for item in items:
        s = os.fspath(item)
        if _GLOB_CHARS & set(s):
            matches = sorted(glob.glob(s, recursive=True))
            if not matches:
                raise FileNotFoundError(f"glob pattern matched no files: {s}")
            paths = [Path(m) for m in matches]
        else:
            p = Path(s)
            if p.is_dir():
                raise IsADirectoryError(f"{p} is a directory; pass files or a glob such as '{p / '*.json'}'")
            if not p.exists():
                raise FileNotFoundError(f"no such run file: {p}")
            paths = [p]
        for p in paths:
            if p.is_dir():
                continue  # a glob like results/* may also match sub-directories
            key = p.resolve()
            if key not in seen:  # the same file named twice (path + glob) is read once
                seen.add(key)
                out.append(p)
    return out


def load_runs(
    paths_or_summary: str | os.PathLike[str] | Mapping[str, Any] | Iterable[str | os.PathLike[str]],
) -> list[dict[str, Any]]:
    """Load run records from JSON files.

    Accepts a path, a glob pattern (``results/fashion_mnist/runs/*.json``, ``**`` allowed), or a list mixing both;
    an already-parsed summary/run ``dict`` is accepted too. Each file holds either a single run
    object with at least the keys ``arch, method, dof, top1`` (extras such as ``params, seed,
    epochs, train_seconds, device`` are kept), a summary ``{"protocol": ..., "runs": [...],
    "fit": ...}`` (only ``runs`` is read), or a bare list of runs. Files matched more than once
    are read once. Returns copies of the run dicts in file order.

    Raises:
        FileNotFoundError: a path does not exist or a glob matches nothing.
        KeyError: a run lacks a required key (the message names the file and the key).
        ValueError: invalid JSON or wrongly typed/out-of-range values (the message names the file).
    """
    if isinstance(paths_or_summary, Mapping):
        return _runs_from_object(paths_or_summary, "<summary dict>")
    if isinstance(paths_or_summary, (str, os.PathLike)):
        items: list[str | os.PathLike[str]] = [paths_or_summary]
    else:
        items = list(paths_or_summary)
    runs: list[dict[str, Any]] = []
    for path in _expand_paths(items):
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: invalid JSON ({exc})") from exc
        runs.extend(_runs_from_object(obj, str(path)))
    return runs
