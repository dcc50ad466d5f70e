"""The power law of test error against DoF: ``error = floor + C * DoF**(-alpha)``, fitted in log space.

:func:`fit_power_law` fits ``log(err - floor) = log C - alpha * log DoF`` by least squares (numpy
only); :func:`fit_runs` selects one architecture/method from loaded run records and fits it;
:func:`format_fit` is a one-line summary.  Accuracies are fractions in ``[0, 1]``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["ScalingFit", "fit_power_law", "fit_runs", "format_fit"]


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
