"""Power-law scaling of test error against the ring's degrees of freedom (DoF).

Why this module exists: the central empirical claim of RPG (Wang et al., WACV 2023) is that
accuracy rises log-linearly with the number of free parameters in the ring, i.e. the test
error follows a power law ``error ~= C * DoF**(-alpha)`` -- a straight line in log-log space.
Reproducing that claim means running a sweep over DoF, collecting one JSON result per run,
fitting the law, and plotting it next to the vanilla baselines. This module does the last
three steps with numpy and matplotlib only (no scipy), so it can run anywhere the results land:

* :func:`fit_power_law` -- least-squares fit of ``log(err - floor) = log C - alpha * log DoF``;
* :func:`load_runs` -- read single-run JSON files and/or sweep summary files (paths or globs);
* :func:`fit_runs` -- select one architecture/method from loaded runs and fit it;
* :func:`plot_scaling` -- log-log figure of error vs DoF with seed error bars and fitted lines;
* :func:`format_fit` -- a one-line human summary of a fit.

Accuracies are fractions in ``[0, 1]`` (not percentages); the error is ``1 - top1``.
"""

from __future__ import annotations

import glob
import json
import math
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "REQUIRED_RUN_KEYS",
    "ScalingFit",
    "fit_power_law",
    "fit_runs",
    "format_fit",
    "load_runs",
    "plot_scaling",
]

#: Keys every run record must carry. Optional extras: params, seed, epochs, train_seconds, device, ...
REQUIRED_RUN_KEYS: tuple[str, ...] = ("arch", "method", "dof", "top1")

_GLOB_CHARS = frozenset("*?[")


# --------------------------------------------------------------------------------------------- fit


@dataclass(frozen=True)
class ScalingFit:
    """Result of fitting ``error = error_floor + coefficient * dof**(-exponent)``.

    ``exponent`` (alpha) is positive when the error falls as DoF grows. ``r2`` is the
    coefficient of determination of the straight-line fit in log space, over all points
    (seeds included), so seed noise lowers it.
    """

    exponent: float
    coefficient: float
    r2: float
    n_points: int
    error_floor: float = 0.0

    def predict_error(self, dof: Any) -> Any:
        """Predicted test error at ``dof`` (scalar -> float, array-like -> ndarray)."""
        d = np.asarray(dof, dtype=float)
        if np.any(d <= 0):
            raise ValueError("dof must be positive")
        err = self.error_floor + self.coefficient * np.power(d, -self.exponent)
        return float(err) if err.ndim == 0 else err

    def predict_top1(self, dof: Any) -> Any:
        """Predicted top-1 accuracy ``1 - predict_error(dof)`` (not clipped to ``[0, 1]``)."""
        err = self.predict_error(dof)
        return 1.0 - err

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable representation (plain Python scalars)."""
        return {
            "law": "error = error_floor + coefficient * dof**(-exponent)",
            "exponent": float(self.exponent),
            "coefficient": float(self.coefficient),
            "r2": float(self.r2),
            "n_points": int(self.n_points),
            "error_floor": float(self.error_floor),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ScalingFit:
        """Inverse of :meth:`to_dict` (extra keys such as ``law`` are ignored)."""
        missing = [k for k in ("exponent", "coefficient", "r2", "n_points") if k not in d]
        if missing:
            raise KeyError(f"ScalingFit.from_dict: missing key(s) {missing}")
        return cls(
            exponent=float(d["exponent"]),
            coefficient=float(d["coefficient"]),
            r2=float(d["r2"]),
            n_points=int(d["n_points"]),
            error_floor=float(d.get("error_floor", 0.0)),
        )


def fit_power_law(
    dof: Sequence[float] | np.ndarray, top1: Sequence[float] | np.ndarray, *, error_floor: float = 0.0
) -> ScalingFit:
    """Fit ``log(1 - top1 - error_floor) = log C - alpha * log(dof)`` by least squares.

    One entry per run; repeated DoF values (different seeds) are all used as separate points.

    Raises:
        ValueError: mismatched/empty/non-finite inputs, non-positive DoF, accuracies outside
            ``[0, 1]``, a floor outside ``[0, 1)``, any error ``<= error_floor``, or fewer than
            two distinct DoF values.
    """
    d = np.asarray(dof, dtype=float).reshape(-1) if np.ndim(dof) <= 1 else None
    a = np.asarray(top1, dtype=float).reshape(-1) if np.ndim(top1) <= 1 else None
    if d is None or a is None:
        raise ValueError("dof and top1 must be scalars or 1-D sequences")
    if d.shape != a.shape:
        raise ValueError(f"dof and top1 must have the same length (got {d.size} and {a.size})")
    if d.size == 0:
        raise ValueError("no points to fit")
    if not (np.all(np.isfinite(d)) and np.all(np.isfinite(a))):
        raise ValueError("dof and top1 must be finite (no NaN/inf)")
    if np.any(d <= 0):
        raise ValueError(f"dof must be positive; got {d[d <= 0].tolist()}")
    if np.any((a < 0) | (a > 1)):
        bad = a[(a < 0) | (a > 1)].tolist()
        hint = " (looks like percentages; divide by 100)" if np.all(a[a > 1] <= 100) and np.any(a > 1) else ""
        raise ValueError(f"top1 accuracies must lie in [0, 1]; got {bad}{hint}")
    floor = float(error_floor)
    if not (math.isfinite(floor) and 0.0 <= floor < 1.0):
        raise ValueError(f"error_floor must be in [0, 1); got {error_floor!r}")
    err = 1.0 - a
    excess = err - floor
    if np.any(excess <= 0):
        raise ValueError(
            f"every error (1 - top1) must exceed error_floor={floor}; "
            f"offending errors: {err[excess <= 0].tolist()}"
        )
    n_distinct = np.unique(d).size
    if n_distinct < 2:
        raise ValueError(f"need at least 2 distinct dof values to fit a power law; got {n_distinct}")

    x = np.log(d)
    y = np.log(excess)
    slope, intercept = np.polyfit(x, y, 1)
    resid = y - (slope * x + intercept)
    ss_res = float(np.sum(resid**2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    if ss_tot > 0:
        r2 = 1.0 - ss_res / ss_tot
    else:  # all errors identical: a flat line fits exactly
        r2 = 1.0 if ss_res <= 1e-24 else float("nan")
    return ScalingFit(
        exponent=float(-slope),
        coefficient=float(np.exp(intercept)),
        r2=float(r2),
        n_points=int(d.size),
        error_floor=floor,
    )


def format_fit(fit: ScalingFit) -> str:
    """One-line human summary, e.g. ``err = 2.000 * DoF^-0.2500  (alpha=0.2500, R^2=0.9999, n=20)``."""
    floor = f"{fit.error_floor:.4g} + " if fit.error_floor else ""
    return (
        f"err = {floor}{fit.coefficient:.4g} * DoF^-{fit.exponent:.4f}  "
        f"(alpha={fit.exponent:.4f}, R^2={fit.r2:.4f}, n={fit.n_points})"
    )


# ------------------------------------------------------------------------------------------- loading


def _validate_run(run: Any, where: str) -> dict[str, Any]:
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
        return [_validate_run(r, f"{where}: runs[{i}]") for i, r in enumerate(runs)]
    if isinstance(obj, Mapping):
        return [_validate_run(obj, where)]
    if isinstance(obj, list):
        return [_validate_run(r, f"{where}: [{i}]") for i, r in enumerate(obj)]
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

    Accepts a path, a glob pattern (``results/*.json``, ``**`` allowed), or a list mixing both;
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


def _select(
    runs: Iterable[Mapping[str, Any]], arch: str | None, method: str | None
) -> list[Mapping[str, Any]]:
    return [
        r
        for r in runs
        if (arch is None or r.get("arch") == arch) and (method is None or r.get("method") == method)
    ]


def fit_runs(
    runs: Iterable[Mapping[str, Any]],
    arch: str | None = None,
    method: str | None = "rpg",
    *,
    error_floor: float = 0.0,
) -> ScalingFit:
    """Fit the power law to the runs of one ``arch`` and ``method`` (``None`` = no filter).

    With ``arch=None`` the selected runs must all share one architecture: pooling different
    networks into one law is almost always a mistake, so that raises instead.
    """
    runs = list(runs)
    sel = _select(runs, arch, method)
    if not sel:
        available = sorted({(str(r.get("arch")), str(r.get("method"))) for r in runs})
        raise ValueError(
            f"no runs with arch={arch!r}, method={method!r}; available (arch, method): {available}"
        )
    archs = sorted({str(r.get("arch")) for r in sel})
    if arch is None and len(archs) > 1:
        raise ValueError(f"runs span several architectures {archs}; pass arch=... to fit one of them")
    return fit_power_law([r["dof"] for r in sel], [r["top1"] for r in sel], error_floor=error_floor)


# ---------------------------------------------------------------------------------------- plotting


def _mean_std_by_dof(
    runs: Sequence[Mapping[str, Any]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per distinct DoF: (dof, mean error, std error over seeds (ddof=1, 0 for one seed), count)."""
    groups: dict[float, list[float]] = {}
    for r in runs:
        groups.setdefault(float(r["dof"]), []).append(1.0 - float(r["top1"]))
    dofs = np.array(sorted(groups), dtype=float)
    means = np.array([np.mean(groups[d]) for d in dofs])
    stds = np.array([np.std(groups[d], ddof=1) if len(groups[d]) > 1 else 0.0 for d in dofs])
    counts = np.array([len(groups[d]) for d in dofs])
    return dofs, means, stds, counts


def _normalise_fits(
    fits: Mapping[str, ScalingFit] | ScalingFit | Iterable[ScalingFit] | None,
) -> dict[str, ScalingFit]:
    if fits is None:
        return {}
    if isinstance(fits, ScalingFit):
        return {"fit": fits}
    if isinstance(fits, Mapping):
        return {str(k): v for k, v in fits.items()}
    return {f"fit {i}": f for i, f in enumerate(fits)}


def _normalise_reference(
    vanilla: Iterable[Mapping[str, Any]] | Mapping[str, tuple[float, float]] | None,
) -> list[dict[str, Any]]:
    if vanilla is None:
        return []
    if isinstance(vanilla, Mapping):
        return [
            {"arch": str(a), "method": "vanilla", "dof": float(v[0]), "top1": float(v[1])}
            for a, v in vanilla.items()
        ]
    return [_validate_run(r, f"vanilla[{i}]") for i, r in enumerate(vanilla)]


def plot_scaling(
    runs: Iterable[Mapping[str, Any]],
    fits: Mapping[str, ScalingFit] | ScalingFit | Iterable[ScalingFit] | None,
    path: str | os.PathLike[str],
    *,
    vanilla: Iterable[Mapping[str, Any]] | Mapping[str, tuple[float, float]] | None = None,
    title: str | None = None,
) -> Path:
    """Plot test error vs DoF (both log axes) and write a PNG to ``path``; return the path.

    * ``method == "rpg"`` runs: one line per arch through the per-DoF mean error, with
      +/- one standard deviation over seeds as error bars.
    * every other run (equal-DoF vanilla, ablations, full-size vanilla, ...): individual
      markers, one marker shape per method, coloured by arch, labelled ``arch method``.
    * ``fits``: ``{label: ScalingFit}`` (use the arch name as label to share its colour), a
      single fit, or a list; each drawn as a dashed line annotated with alpha and R^2 over the
      DoF range of its arch's RPG runs (or of all runs when the label is not an arch).
    * ``vanilla``: extra reference points, as run dicts or ``{arch: (params, top1)}``; drawn as
      large stars (e.g. the full-size baselines when they live outside ``runs``).

    Runs with zero error cannot be shown on a log axis; they are skipped with a warning.
    Uses :class:`matplotlib.figure.Figure` directly, so the global backend is never touched.
    """
    from matplotlib.figure import Figure

    all_runs = [dict(r) for r in runs]
    refs = _normalise_reference(vanilla)
    fit_map = _normalise_fits(fits)

    def _plottable(rs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        keep = [r for r in rs if 1.0 - float(r["top1"]) > 0]
        if len(keep) < len(rs):
            warnings.warn(
                f"skipping {len(rs) - len(keep)} run(s) with zero error (cannot show on a log axis)",
                stacklevel=3,
            )
        return keep

    all_runs = _plottable(all_runs)
    refs = _plottable(refs)

    archs = sorted({str(r["arch"]) for r in all_runs + refs} | {k for k in fit_map})
    palette = [f"C{i}" for i in range(10)]
    colour = {a: palette[i % len(palette)] for i, a in enumerate(archs)}
    methods = sorted({str(r["method"]) for r in all_runs if r["method"] != "rpg"})
    marker_cycle = ["s", "^", "D", "v", "P", "X", "<", ">", "h", "p"]
    marker = {m: marker_cycle[i % len(marker_cycle)] for i, m in enumerate(methods)}

    fig = Figure(figsize=(7.5, 5.0), dpi=120)
    ax = fig.add_subplot(1, 1, 1)
    ax.set_xscale("log")
    ax.set_yscale("log")

    # RPG sweeps: mean +/- std over seeds per DoF.
    for a in archs:
        rpg = [r for r in all_runs if r["arch"] == a and r["method"] == "rpg"]
        if not rpg:
            continue
        d, mean, std, counts = _mean_std_by_dof(rpg)
        lower = np.minimum(std, mean * 0.999)  # keep the lower bar above zero on the log axis
        seeds = int(counts.max())
        label = f"{a} rpg" + (f" (mean ± std, ≤{seeds} seeds)" if seeds > 1 else "")
        ax.errorbar(
            d,
            mean,
            yerr=np.vstack([lower, std]),
            fmt="o-",
            color=colour[a],
            capsize=3,
            markersize=5,
            linewidth=1.5,
            label=label,
        )

    # Everything else: one marker per run, shape by method.
    for a in archs:
        for m in methods:
            pts = [r for r in all_runs if r["arch"] == a and r["method"] == m]
            if not pts:
                continue
            ax.scatter(
                [float(r["dof"]) for r in pts],
                [1.0 - float(r["top1"]) for r in pts],
                marker=marker[m],
                s=45,
                facecolors="none",
                edgecolors=colour[a],
                linewidths=1.5,
                label=f"{a} {m}",
                zorder=3,
            )

    for r in refs:
        ax.scatter(
            [float(r["dof"])],
            [1.0 - float(r["top1"])],
            marker="*",
            s=160,
            color=colour.get(str(r["arch"]), "k"),
            edgecolors="k",
            linewidths=0.6,
            zorder=4,
            label=f"{r['arch']} {r['method']} (reference)",
        )

    # Fitted laws: dashed, annotated with alpha and R^2.
    all_dofs = [float(r["dof"]) for r in all_runs + refs]
    for label, fit in fit_map.items():
        span = [float(r["dof"]) for r in all_runs if r["arch"] == label and r["method"] == "rpg"]
        span = span or [float(r["dof"]) for r in all_runs if r["arch"] == label] or all_dofs
        if not span:
            continue
        lo, hi = min(span), max(span)
        if lo == hi:
            lo, hi = lo / 2.0, hi * 2.0
        xs = np.geomspace(lo / 1.5, hi * 1.5, 100)
        ys = np.asarray(fit.predict_error(xs), dtype=float)
        ok = ys > 0
        if not ok.any():
            continue
        c = colour.get(label, "0.3")
        text = f"α={fit.exponent:.3f}, R²={fit.r2:.3f}"
        ax.plot(xs[ok], ys[ok], "--", color=c, linewidth=1.2, label=f"fit {label}: {text}")
        xm = float(np.sqrt(lo * hi))
        ym = float(fit.predict_error(xm))
        if ym > 0:
            ax.annotate(text, (xm, ym), xytext=(6, 6), textcoords="offset points", fontsize=8, color=c)

    ax.set_xlabel("degrees of freedom (DoF, trainable parameters)")
    ax.set_ylabel("test error (1 − top-1)")
    ax.grid(True, which="both", alpha=0.3)
    if title:
        ax.set_title(title)
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out
