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

The fit lives in :mod:`.scaling_fit`, reading run files in :mod:`.scaling_runs`, the figure in
:mod:`.scaling_plot`; this module gathers their public names.

Accuracies are fractions in ``[0, 1]`` (not percentages); the error is ``1 - top1``.
"""

from __future__ import annotations

from rpg_hf.train.scaling_fit import ScalingFit, fit_power_law, fit_runs, format_fit
from rpg_hf.train.scaling_plot import plot_scaling
from rpg_hf.train.scaling_runs import REQUIRED_RUN_KEYS, load_runs

__all__ = [
    "REQUIRED_RUN_KEYS",
    "ScalingFit",
    "fit_power_law",
    "fit_runs",
    "format_fit",
    "load_runs",
    "plot_scaling",
]
