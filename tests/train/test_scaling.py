"""Tests for rpg_hf.train.scaling: power-law fit recovery, run loading, validation and plotting."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rpg_hf.train.scaling import ScalingFit, fit_power_law, fit_runs, format_fit, load_runs, plot_scaling

C_TRUE = 2.0
ALPHA_TRUE = 0.25
DOFS = np.geomspace(1e3, 1e7, 9)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _law_top1(dof: np.ndarray, c: float = C_TRUE, alpha: float = ALPHA_TRUE, floor: float = 0.0) -> Any:
    return 1.0 - (floor + c * np.power(dof, -alpha))


def _synthetic_runs(seeds: int = 3, noise: float = 0.01, arch: str = "resnet18") -> list[dict]:
    """RPG runs on the known law, with multiplicative log-normal noise (fixed seed)."""
    rng = np.random.default_rng(0)
    runs = []
    for d in DOFS.round().astype(int).tolist():
        for s in range(seeds):
            err = C_TRUE * d**-ALPHA_TRUE * float(np.exp(rng.normal(0.0, noise)))
            runs.append({"arch": arch, "method": "rpg", "dof": d, "top1": 1.0 - err, "seed": s})
    return runs


# ------------------------------------------------------------------------------------------- fitting


def test_fit_recovers_noise_free_law() -> None:
    fit = fit_power_law(DOFS, _law_top1(DOFS))
    assert fit.exponent == pytest.approx(ALPHA_TRUE, rel=1e-9)
    assert fit.coefficient == pytest.approx(C_TRUE, rel=1e-9)
    assert fit.r2 == pytest.approx(1.0, abs=1e-12)
    assert fit.n_points == DOFS.size
    assert fit.error_floor == 0.0


def test_fit_recovers_noisy_law_with_repeated_seeds() -> None:
    rng = np.random.default_rng(1234)
    dof = np.repeat(DOFS, 3)  # 3 seeds per DoF; all points are used
    err = C_TRUE * dof**-ALPHA_TRUE * np.exp(rng.normal(0.0, 0.01, dof.size))  # ~1 % noise
    fit = fit_power_law(dof, 1.0 - err)
    assert fit.exponent == pytest.approx(ALPHA_TRUE, rel=0.01)
    assert fit.coefficient == pytest.approx(C_TRUE, rel=0.05)
    assert fit.r2 > 0.99
    assert fit.n_points == dof.size


def test_fit_with_error_floor() -> None:
    floor = 0.05
    fit = fit_power_law(DOFS, _law_top1(DOFS, floor=floor), error_floor=floor)
    assert fit.exponent == pytest.approx(ALPHA_TRUE, rel=1e-9)
    assert fit.coefficient == pytest.approx(C_TRUE, rel=1e-9)
    assert fit.predict_error(1e5) == pytest.approx(floor + C_TRUE * 1e5**-ALPHA_TRUE)


def test_predictions_match_generating_law() -> None:
    fit = fit_power_law(DOFS, _law_top1(DOFS))
    grid = np.geomspace(5e2, 2e7, 17)
    np.testing.assert_allclose(fit.predict_top1(grid), _law_top1(grid), rtol=1e-9)
    np.testing.assert_allclose(fit.predict_error(grid), C_TRUE * grid**-ALPHA_TRUE, rtol=1e-9)
    scalar = fit.predict_top1(1e4)
    assert isinstance(scalar, float)
    assert scalar == pytest.approx(1.0 - C_TRUE * 1e4**-ALPHA_TRUE)
    with pytest.raises(ValueError, match="positive"):
        fit.predict_error([1e3, 0.0])


def test_to_dict_roundtrip_and_format() -> None:
    fit = fit_power_law(DOFS, _law_top1(DOFS))
    d = fit.to_dict()
    json.dumps(d)  # JSON-serialisable
    assert {"exponent", "coefficient", "r2", "n_points", "error_floor"} <= d.keys()
    assert ScalingFit.from_dict(d) == fit
    line = format_fit(fit)
    assert "\n" not in line
    assert "alpha=0.2500" in line and "R^2=1.0000" in line and f"n={DOFS.size}" in line
    with pytest.raises(AttributeError):
        fit.exponent = 1.0  # type: ignore[misc]  # frozen


@pytest.mark.parametrize(
    ("dof", "top1", "floor", "match"),
    [
        ([1e3, 1e3, 1e3], [0.5, 0.6, 0.7], 0.0, "2 distinct"),
        ([1e3], [0.5], 0.0, "2 distinct"),
        ([1e3, 0.0], [0.5, 0.6], 0.0, "positive"),
        ([1e3, -5.0], [0.5, 0.6], 0.0, "positive"),
        ([1e3, 1e4], [0.5, 1.2], 0.0, r"\[0, 1\]"),
        ([1e3, 1e4], [-0.1, 0.5], 0.0, r"\[0, 1\]"),
        ([1e3, 1e4], [55.0, 70.0], 0.0, "percentages"),
        ([1e3, 1e4], [0.5, 1.0], 0.0, "exceed error_floor"),
        ([1e3, 1e4], [0.5, 0.9], 0.2, "exceed error_floor"),
        ([1e3, 1e4], [0.5, 0.6], 1.0, "error_floor must be"),
        ([1e3, 1e4, 1e5], [0.5, 0.6], 0.0, "same length"),
        ([], [], 0.0, "no points"),
        ([1e3, float("nan")], [0.5, 0.6], 0.0, "finite"),
    ],
)
def test_fit_validation(dof: list, top1: list, floor: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        fit_power_law(dof, top1, error_floor=floor)


# ------------------------------------------------------------------------------------------- loading


def _write(path: Path, obj: object) -> Path:
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def test_load_single_run_files_and_glob(tmp_path: Path) -> None:
    runs = _synthetic_runs(seeds=1, noise=0.0)
    for i, r in enumerate(runs):
        _write(tmp_path / f"run_{i:02d}.json", {**r, "params": 11_000_000, "epochs": 1, "device": "cpu"})
    _write(tmp_path / "notes.txt", {"not": "a run"})  # must not match the glob

    loaded = load_runs(str(tmp_path / "run_*.json"))
    assert len(loaded) == len(runs)
    assert [r["dof"] for r in loaded] == [r["dof"] for r in runs]
    assert loaded[0]["params"] == 11_000_000

    # list of paths + an overlapping glob: each file is read once
    again = load_runs([tmp_path / "run_00.json", str(tmp_path / "run_0*.json")])
    assert len(again) == 9
    single = load_runs(tmp_path / "run_03.json")
    assert single == [loaded[3]]

    fit = fit_runs(loaded)
    assert fit.exponent == pytest.approx(ALPHA_TRUE, rel=1e-6)


def test_load_summary_file(tmp_path: Path) -> None:
    runs = _synthetic_runs(seeds=2)
    runs += [{"arch": "resnet18", "method": "vanilla", "dof": 11_689_512, "top1": 0.7}]
    summary = {"protocol": {"dataset": "synthetic"}, "runs": runs, "fit": None}
    path = _write(tmp_path / "summary.json", summary)
    loaded = load_runs(path)
    assert loaded == runs
    assert load_runs(summary) == runs  # an already-parsed summary is accepted too

    fit = fit_runs(loaded, arch="resnet18", method="rpg")
    assert fit.n_points == 2 * DOFS.size
    assert fit.exponent == pytest.approx(ALPHA_TRUE, rel=0.01)
    assert fit.r2 > 0.99


def test_load_errors_name_file_and_key(tmp_path: Path) -> None:
    bad = _write(tmp_path / "bad_run.json", {"arch": "resnet18", "method": "rpg", "top1": 0.5})
    with pytest.raises(KeyError, match=r"bad_run\.json.*'dof'"):
        load_runs(bad)

    good = {"arch": "a", "method": "rpg", "dof": 10, "top1": 0.5}
    bad_summary = _write(tmp_path / "bad_summary.json", {"runs": [good, {"arch": "a", "dof": 10}]})
    with pytest.raises(KeyError, match=r"bad_summary\.json: runs\[1\].*'method'.*'top1'"):
        load_runs(bad_summary)

    pct = _write(tmp_path / "pct.json", {"arch": "a", "method": "rpg", "dof": 10, "top1": 76.1})
    with pytest.raises(ValueError, match=r"pct\.json.*percentage"):
        load_runs(pct)

    broken = tmp_path / "broken.json"
    broken.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match=r"broken\.json.*invalid JSON"):
        load_runs(broken)

    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_runs(tmp_path / "missing.json")
    with pytest.raises(FileNotFoundError, match="matched no files"):
        load_runs(str(tmp_path / "nothing_*.json"))
    with pytest.raises(IsADirectoryError):
        load_runs(tmp_path)


def test_fit_runs_filters_and_rejects_mixed_archs() -> None:
    runs = _synthetic_runs(seeds=1, noise=0.0) + _synthetic_runs(seeds=1, noise=0.0, arch="vit_tiny")
    runs += [{"arch": "resnet18", "method": "vanilla", "dof": 11_689_512, "top1": 0.1}]
    with pytest.raises(ValueError, match="several architectures"):
        fit_runs(runs)
    fit = fit_runs(runs, arch="vit_tiny")
    assert fit.n_points == DOFS.size
    with pytest.raises(ValueError, match="no runs with"):
        fit_runs(runs, arch="convnext")


# ------------------------------------------------------------------------------------------ plotting


def test_plot_writes_valid_png(tmp_path: Path) -> None:
    runs = _synthetic_runs(seeds=3) + _synthetic_runs(seeds=2, arch="vit_tiny")
    runs += [
        {"arch": "resnet18", "method": "vanilla", "dof": 10_000, "top1": 0.40},
        {"arch": "resnet18", "method": "no_permutation", "dof": 100_000, "top1": 0.55},
    ]
    fits = {a: fit_runs(runs, arch=a) for a in ("resnet18", "vit_tiny")}
    out = plot_scaling(
        runs,
        fits,
        tmp_path / "plots" / "scaling.png",
        vanilla={"resnet18": (11_689_512, 0.95)},
        title="synthetic",
    )
    assert out == tmp_path / "plots" / "scaling.png"
    data = out.read_bytes()
    assert len(data) > 0
    assert data[:8] == PNG_SIGNATURE
    try:
        from PIL import Image
    except ImportError:  # pillow is optional for this check
        return
    with Image.open(out) as img:
        img.verify()
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size[0] > 100 and img.size[1] > 100


def test_plot_without_fits_and_zero_error_run(tmp_path: Path) -> None:
    runs = _synthetic_runs(seeds=1) + [{"arch": "resnet18", "method": "rpg", "dof": 10, "top1": 1.0}]
    with pytest.warns(UserWarning, match="zero error"):
        out = plot_scaling(runs, None, tmp_path / "bare.png")
    assert out.read_bytes()[:8] == PNG_SIGNATURE
