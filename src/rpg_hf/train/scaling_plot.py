"""The scaling figure: test error against DoF on log-log axes, seed error bars and fitted laws.

Uses :class:`matplotlib.figure.Figure` directly (imported when a plot is drawn), so the global
backend is never touched.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rpg_hf.train.scaling_fit import ScalingFit
from rpg_hf.train.scaling_runs import validate_run

__all__ = ["plot_scaling"]


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
    return [validate_run(r, f"vanilla[{i}]") for i, r in enumerate(vanilla)]


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
