"""The science sweep (recipes/science/sweep.py) end to end on a tiny generated IDX dataset.

One `accelerate launch` of the real script over a tiny grid that still has every kind of run
(RPG at two DoF values, one of them matched to a narrowed vanilla network, the full vanilla
network, the equal-DoF vanilla network and all four ablations), then a second invocation that
must resume (skip every finished run) — and checks of what the issue asks the sweep to produce:
per-run JSONs, summary.json's schema, the plot, the table/README matching summary.json, and model
cards of the saved RPG runs carrying their results.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from rpg_hf.train.data import write_idx

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "recipes" / "science" / "sweep.py"
RUN_KEYS = {"arch", "method", "dof", "params", "seed", "top1", "epochs", "train_seconds", "device"}
PROTOCOL_KEYS = {"epochs", "batch_size", "optimizer", "device"}
FIT_KEYS = {"arch", "exponent", "r2"}
ABLATIONS = {"rpg-no-permute": {"permute": False}, "rpg-no-sign-flip": {"sign_flip": False},
             "plain-sharing": {"permute": False, "sign_flip": False}, "rpg-stage-rings": {"scope": "stage"}}


def _sweep_module():
    return importlib.import_module("recipes.science.sweep")


GRID = importlib.import_module("recipes.science.grid")  # the grid and protocol, shared by sweep and report


def _tiny_idx(root: Path, n_train: int = 60, n_test: int = 30, classes: int = 10) -> Path:
    """28×28 uint8 images whose class is a bright horizontal band at a class-dependent row, plus noise."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = (np.arange(n) % classes).astype(np.uint8)
        images = rng.integers(0, 40, size=(n, 28, 28), dtype=np.uint8)
        for i, c in enumerate(labels):
            images[i, 2 + 2 * int(c) : 4 + 2 * int(c), 4:24] = 230
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return root


def _tiny_config(tmp_path: Path, data: Path) -> Path:
    cfg = {
        "name": "tiny", "title": "tiny sweep", "results_dir": str(tmp_path / "results"),
        "models_dir": str(tmp_path / "models"), "command": "pytest tests/recipes/test_science.py",
        "reduced_note": "a test grid",
        "dataset": {"name": "fashion_mnist", "root": str(data), "in_chans": 1, "num_classes": 10, "image_size": 28,
                    "mean": 0.2860, "std": 0.3530, "train_subset": 50, "subset_seed": 0},
        "protocol": {"epochs": 1, "batch_size": 25, "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4,
                     "warmup_epochs": 0.5, "augmentation": "crop+flip", "eval_batch_size": 16},
        "seeds": [0],
        "width": 32,
        "rpg": [{"arch": "cifar_resnet18", "dof": [300, 3000]}],
        "vanilla_full": ["cifar_resnet18"],
        "equal_dof_vanilla": {"arch": "cifar_resnet18", "dof": [3000]},
        "ablations": {"arch": "cifar_resnet18", "dof": 300, "plain_sharing": "plain-sharing", "variants": ABLATIONS},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def _run(args: list[str], launcher: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    proc = subprocess.run([*launcher, str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"sweep failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    return proc


@pytest.mark.slow
def test_sweep_end_to_end_and_resume(tmp_path):
    data = _tiny_idx(tmp_path / "tiny_idx")
    config = _tiny_config(tmp_path, data)
    results = tmp_path / "results"
    # Two CPU workers (accelerate's MULTI_CPU via torchrun) that deal the runs out between them: the
    # path that must save every rank's checkpoints and let the last process write the summary.
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                  "--num_cpu_threads_per_process", "1", "--num_machines", "1", "--mixed_precision", "no",
                  "--dynamo_backend", "no"]
    if torch.cuda.is_available():  # one GPU: a single process (the CPU-worker path needs no accelerator)
        accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1",
                      "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    first = _run(["--config", str(config)], accelerate)
    assert "summary.json" in first.stdout
    assert torch.cuda.is_available() or ("[rank 0/2]" in first.stdout and "[rank 1/2]" in first.stdout)

    # -- per-run JSONs: one per grid point, every method kind present
    run_files = sorted((results / "runs").glob("*.json"))
    runs = [json.loads(p.read_text()) for p in run_files]
    methods = {r["method"] for r in runs}
    assert methods == {"rpg", "vanilla", *ABLATIONS}
    assert len(runs) == 2 + 1 + 1 + len(ABLATIONS)
    for r in runs:
        assert RUN_KEYS <= set(r), r
        assert r["test_samples"] == 30 and r["train_samples"] == 50
        correct = r["top1"] * 30  # a count of the 30 test images
        assert 0 <= round(correct) <= 30 and abs(correct - round(correct)) < 1e-9, r["top1"]
        assert r["epochs"] == 1 and r["steps"] == 2
    by_role = {}
    for r in runs:
        by_role.setdefault(r["role"], []).append(r)
    full, equal = by_role["full"][0], by_role["equal_dof"][0]
    assert full["dof"] == full["params"] and equal["width"] < 32 and equal["params"] < full["params"]
    rpg3k = next(r for r in by_role["rpg"] if r["dof"] == 3000)
    assert equal["matched_rpg"] == {"arch": "cifar_resnet18", "dof": 3000, "trainable_params": rpg3k["trainable_params"]}
    from rpg_hf.train.models import vanilla_params

    # the demo's rule: the closest narrowed width to the RPG model's trainable parameters
    gap = abs(equal["params"] - rpg3k["trainable_params"])
    assert all(abs(vanilla_params("cifar_resnet18", w, 10) - rpg3k["trainable_params"]) >= gap
               for w in (equal["width"] - 1, equal["width"] + 1))
    assert {r["dof"] for r in by_role["ablation"]} == {300}
    stage = next(r for r in runs if r["method"] == "rpg-stage-rings")
    assert stage["scope"] == "stage"

    # -- summary.json: the issue's schema, one entry per finished run, nothing else
    summary = json.loads((results / "summary.json").read_text())
    assert {"protocol", "runs", "fit"} <= set(summary)
    assert PROTOCOL_KEYS <= set(summary["protocol"])
    assert summary["protocol"]["augmentation"] == "crop+flip"
    assert len(summary["runs"]) == len(runs)
    assert {r["run_id"] for r in summary["runs"]} == {r["run_id"] for r in runs}
    for r in summary["runs"]:
        assert RUN_KEYS <= set(r)
    fit = summary["fit"]
    assert FIT_KEYS <= set(fit) and fit["arch"] == "cifar_resnet18"
    assert math.isfinite(fit["exponent"]) and math.isfinite(fit["r2"])
    assert [c["claim"] for c in summary["claims"]] == [1, 2, 3, 4]
    assert summary["compute"]["missing"] == []

    # -- plot, table and README generated from summary.json
    png = results / "dof_vs_error.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (results / "table.md").read_text()
    readme = (results / "README.md").read_text()
    assert "dof_vs_error.png" in readme and table in readme
    rows = [line for line in table.splitlines() if line.startswith("| cifar_resnet18 |")]
    assert len(rows) == len(summary["aggregate"])
    for g in summary["aggregate"]:
        assert f"| {g['dof']:,} |" in table and f"{100 * g['top1_mean']:.2f}" in table

    # -- saved RPG runs: ring-only checkpoint whose card carries the run's result; reload is exact
    from huggingface_hub import ModelCard

    for r in runs:
        if r["method"] == "vanilla":
            assert "checkpoint" not in r
            continue
        folder = Path(r["checkpoint"])
        assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
        assert r["reload_max_abs_logit_diff"] == 0.0
        card = ModelCard.load(folder / "README.md")
        (result,) = card.data.eval_results
        assert result.dataset_type == "fashion_mnist" and result.dataset_split == "test"
        assert result.metric_value == pytest.approx(100 * r["top1"])

    # -- a second invocation resumes: nothing retrained, summary rebuilt
    mtimes = {p.name: p.stat().st_mtime_ns for p in run_files}
    second = _run(["--config", str(config), "--threads", "1"], [sys.executable])
    assert f"{len(runs)} finished, 0 pending" in second.stdout
    assert {p.name: p.stat().st_mtime_ns for p in (results / "runs").glob("*.json")} == mtimes
    assert json.loads((results / "summary.json").read_text())["runs"] == summary["runs"]


# Hand-made results of the tiny grid (2 seeds): top-1 per (method, seed), means/stds worked out by hand.
HAND_TOP1 = {
    "rpg@300": (0.70, 0.70),  # error 0.30 at both seeds
    "vanilla-full": (0.80, 0.84),  # mean 82.00, std |0.84 - 0.80| / sqrt(2) = 2.83 points
    "vanilla-equal": (0.60, 0.66),  # 63.00 ± 4.24
    "plain-sharing": (0.50, 0.60),  # 55.00 ± 7.07
    "rpg-no-permute": (0.71, 0.73),  # 72.00 ± 1.41
    "rpg-no-sign-flip": (0.68, 0.70),  # 69.00 ± 1.41
    "rpg-stage-rings": (0.75, 0.75),  # 75.00 ± 0.00
    "rpg@3000": (1 - 0.3 * 10**-0.5,) * 2,  # on error = 0.3 * (dof / 300) ** -0.5: the fit gives exactly 0.5, R² 1
}


def _hand_key(run: dict) -> str:
    if run["method"] == "rpg":
        return f"rpg@{run['dof']}"
    if run["method"] == "vanilla":
        return "vanilla-full" if run["role"] == "full" else "vanilla-equal"
    return run["method"]


def _hand_made_runs(sweep, tmp_path: Path):
    """The tiny grid with both seeds, and a per-run JSON for each point written by hand."""
    cfg = yaml.safe_load(_tiny_config(tmp_path, tmp_path / "no-data").read_text())
    cfg["seeds"] = [0, 1]
    grid = GRID.build_grid(cfg)
    proto = GRID.protocol_of(cfg)
    fp = GRID.fingerprint(proto)
    runs_dir = tmp_path / "results" / "runs"
    runs_dir.mkdir(parents=True)
    for r in grid:
        rec = dict(r, top1=HAND_TOP1[_hand_key(r)][r["seed"]], protocol_fingerprint=fp, device="cpu",
                   train_samples=50, test_samples=30, steps=2, epochs=1, train_seconds=1.5, eval_seconds=0.5,
                   train_loss_last_epoch=(1.0, 0.5)[r["seed"]])
        (runs_dir / f"{r['run_id']}.json").write_text(json.dumps(rec))
    return cfg, grid, proto, fp, runs_dir


def test_summary_aggregates_hand_made_runs(tmp_path):
    """summarize() on per-run JSONs written here: the means, stds, fit and table rows are checked against
    values worked out by hand, and a missing or stale run is reported, not averaged in."""
    sweep, report = _sweep_module(), importlib.import_module("recipes.science.report")
    cfg, grid, proto, fp, runs_dir = _hand_made_runs(sweep, tmp_path)
    assert len(grid) == 2 * (2 + 1 + 1 + len(ABLATIONS))
    assert [r["seed"] for r in grid] == [0] * 8 + [1] * 8  # every seed-0 run first: partial sweeps are useful
    results = tmp_path / "results"
    summary = report.summarize(cfg, grid, proto, fp, results, runs_dir, cfg["command"])
    assert len(summary["aggregate"]) == 8
    expected = {  # (mean, std) in fractions
        "rpg@300": (0.70, 0.0), "rpg@3000": (HAND_TOP1["rpg@3000"][0], 0.0),
        "vanilla-full": (0.82, 0.04 / math.sqrt(2)), "vanilla-equal": (0.63, 0.06 / math.sqrt(2)),
        "plain-sharing": (0.55, 0.10 / math.sqrt(2)), "rpg-no-permute": (0.72, 0.02 / math.sqrt(2)),
        "rpg-no-sign-flip": (0.69, 0.02 / math.sqrt(2)), "rpg-stage-rings": (0.75, 0.0),
    }
    for g in summary["aggregate"]:
        mean, std = expected[_hand_key(g)]
        assert g["n"] == 2 and g["seeds"] == [0, 1]
        assert g["top1_mean"] == pytest.approx(mean, abs=1e-12), g
        assert g["top1_std"] == pytest.approx(std, abs=1e-12), g
        assert g["train_loss_mean"] == pytest.approx(0.75)
    fit = summary["fit"]
    assert fit["arch"] == "cifar_resnet18" and fit["n_points"] == 4
    assert fit["exponent"] == pytest.approx(0.5, abs=1e-9) and fit["r2"] == pytest.approx(1.0, abs=1e-9)
    assert fit["coefficient"] == pytest.approx(0.3 * 300**0.5, rel=1e-9)
    assert summary["compute"] == {"runs_finished": 16, "runs_in_grid": 16, "missing": [], "stale_protocol": [],
                                  "sum_train_seconds": 24.0, "sum_eval_seconds": 8.0}
    table = (results / "table.md").read_text()
    full = next(g for g in summary["aggregate"] if g["role"] == "full")
    assert (f"| cifar_resnet18 | vanilla (full) | – | 32 | {full['dof']:,} | {full['params']:,} | {full['params']:,} "
            "| 2 | 82.00 ± 2.83 | 0.750 |") in table
    for text in ("| 63.00 ± 4.24 |", "| 55.00 ± 7.07 |", "| 72.00 ± 1.41 |", "| 69.00 ± 1.41 |", "| 75.00 ± 0.00 |",
                 "| 70.00 ± 0.00 |", "DoF^-0.5000, R² = 1.000 (4 runs", "Runs finished: 16 of 16"):
        assert text in table, text

    # the report command rebuilds the same files from the stored runs, byte for byte
    before = {name: (results / name).read_bytes() for name in ("summary.json", "table.md", "README.md")}
    config = tmp_path / "hand.yaml"
    config.write_text(yaml.safe_dump(cfg))
    assert report.main(["--config", str(config)]) == 0
    assert {name: (results / name).read_bytes() for name in before} == before

    # resume bookkeeping: a finished run is recognised by its fingerprint; a stale or missing one is not
    gone, stale = grid[1], next(r for r in grid if r["role"] == "full" and r["seed"] == 1)
    assert sweep.finished(runs_dir, gone, fp) and not sweep.finished(runs_dir, gone, "other")
    (runs_dir / f"{gone['run_id']}.json").unlink()
    rec = json.loads((runs_dir / f"{stale['run_id']}.json").read_text())
    (runs_dir / f"{stale['run_id']}.json").write_text(json.dumps(dict(rec, protocol_fingerprint="old")))
    assert not sweep.finished(runs_dir, gone, fp) and not sweep.finished(runs_dir, stale, fp)
    summary = report.summarize(cfg, grid, proto, fp, results, runs_dir, "pytest")
    assert summary["compute"]["missing"] == sorted([gone["run_id"], stale["run_id"]], key=[r["run_id"] for r in grid].index)
    assert summary["compute"]["stale_protocol"] == [stale["run_id"]]
    full = next(g for g in summary["aggregate"] if g["role"] == "full")
    assert (full["n"], full["top1_mean"], full["top1_std"]) == (1, HAND_TOP1["vanilla-full"][0], 0.0)


def test_claims_are_exclusive_and_a_dead_process_claim_is_taken_over(tmp_path):
    sweep = _sweep_module()
    claims = tmp_path / "claims"
    assert sweep.claim(claims, "run-a")
    assert not sweep.claim(claims, "run-a")  # this live process holds it
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (claims / "run-b").write_text(f"{socket.gethostname()} {dead.stdout.strip()}\n")
    assert sweep.claim(claims, "run-b")  # the process that claimed it is gone
    assert (claims / "run-b").read_text().split()[1] == str(os.getpid())
    # a live pid that is not the claimer any more (a later session, a reboot): its start differs
    (claims / "run-c").write_text(f"{socket.gethostname()} {os.getpid()} not-this-process\n")
    assert sweep.claim(claims, "run-c")
    assert not sweep.claim(claims, "run-c")  # now genuinely held by this process


def test_an_interrupted_run_resumes_from_its_last_epoch_bit_identically(tmp_path, monkeypatch):
    """A run killed after epoch 1 restarts from the saved epoch state and ends exactly as an
    uninterrupted run: same test loss and accuracy, same ring."""
    sweep = _sweep_module()
    data = _tiny_idx(tmp_path / "tiny_idx")
    cfg = yaml.safe_load(_tiny_config(tmp_path, data).read_text())
    cfg["protocol"]["epochs"] = 2
    proto, grid = GRID.protocol_of(cfg), GRID.build_grid(cfg)
    fp = GRID.fingerprint(proto)
    run = next(r for r in grid if r["method"] == "rpg" and r["dof"] == 300)
    xtr, ytr, xte, yte, names = sweep.load_data(cfg, None)
    tensors = (xtr, ytr, xte, yte, names)
    common = dict(save_dir=None, command="pytest", fp=fp, progress=False)
    whole = sweep.train_run(run, cfg, proto, tensors, torch.device("cpu"), work_dir=tmp_path / "a", **common)

    save = sweep._save_partial

    def save_then_die(*args, **kwargs):
        save(*args, **kwargs)
        raise KeyboardInterrupt  # the process is killed right after the epoch state is on disk

    monkeypatch.setattr(sweep, "_save_partial", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        sweep.train_run(run, cfg, proto, tensors, torch.device("cpu"), work_dir=tmp_path / "b", **common)
    monkeypatch.setattr(sweep, "_save_partial", save)
    assert (tmp_path / "b" / "partial" / f"{run['run_id']}.safetensors").is_file()
    resumed = sweep.train_run(run, cfg, proto, tensors, torch.device("cpu"), work_dir=tmp_path / "b", **common)
    assert resumed["resumed_from_step"] == 2 and whole["resumed_from_step"] == 0
    for key in ("top1", "top5", "test_loss"):
        assert resumed[key] == whole[key], key
    assert not (tmp_path / "b" / "partial" / f"{run['run_id']}.safetensors").exists()


def test_claim_verdicts_are_computed_from_the_numbers():
    report = importlib.import_module("recipes.science.report")

    def g(arch, method, dof, top1, std=0.001, role=None, width=64, params=None, trainable=None):
        return {"arch": arch, "method": method, "role": role or method, "width": width, "dof": dof,
                "params": params or dof, "trainable_params": trainable or dof, "n": 2, "seeds": [0, 1],
                "top1_mean": top1, "top1_std": std}

    groups = [
        g("r34", "rpg", 1000, 0.80, params=300_000), g("r34", "rpg", 9800, 0.86, params=300_000, trainable=10_100),
        g("r18", "rpg", 1000, 0.79, params=200_000), g("r18", "rpg", 10000, 0.85, params=200_000),
        g("r18", "vanilla", 10000, 0.84, role="equal_dof", width=20),
        g("r18", "vanilla", 200000, 0.89, role="full"),
        g("r18", "plain-sharing", 10000, 0.80, role="ablation"), g("r18", "rpg-stage-rings", 10000, 0.851, role="ablation"),
    ]
    fits = {a: {"arch": a, "exponent": 0.1, "r2": 0.95, "dof_min": 1000, "dof_max": 10000} for a in ("r18", "r34")}
    abl = {"arch": "r18", "dof": 10000, "plain_sharing": "plain-sharing"}
    verdicts = {c["claim"]: c for c in report.claims(groups, fits, ["r18", "r34"], abl)}
    # r34-RPG (10,100 trainable) pairs with the vanilla r18 of 10,000 params (1% apart); its 1,000-DoF point
    # has no vanilla within 5% and is not paired
    assert verdicts[1]["verdict"] == "reproduced" and len(verdicts[1]["pairs"]) == 1
    assert verdicts[1]["pairs"][0]["diff"] == pytest.approx(0.02)
    assert verdicts[2]["verdict"] == "reproduced"
    assert verdicts[3]["verdict"] == "reproduced"  # 85/89 = 95.5% >= the paper's 95.3%
    assert verdicts[4]["verdict"] == "reproduced"  # 5 points, far beyond a 0.14-point spread

    groups[4] = g("r18", "vanilla", 10000, 0.87, role="equal_dof", width=20)  # vanilla now wins
    fits["r18"]["r2"] = 0.5
    groups[6] = g("r18", "plain-sharing", 10000, 0.849, role="ablation")
    verdicts = {c["claim"]: c for c in report.claims(groups, fits, ["r18", "r34"], abl)}
    assert verdicts[1]["verdict"] == "not reproduced"
    assert verdicts[2]["verdict"] == "partly reproduced"
    assert verdicts[4]["verdict"] == "direction only (within the seed spread)"
    groups[4] = g("r18", "vanilla", 10000, 0.855, std=0.01, role="equal_dof", width=20)  # a win within the spread
    verdict = report.claims(groups, fits, ["r18", "r34"], None)[0]
    assert verdict["verdict"] == "partly reproduced" and "1 of 1 equal-DoF comparisons, 0 of them" in verdict["text"]

    # one seed: no spread measured, so a win is a direction, never "beyond the seed spread"
    single = [dict(x, n=1, seeds=[0], top1_std=0.0) for x in groups]
    single[4] = dict(single[4], top1_mean=0.84)
    verdicts = {c["claim"]: c for c in report.claims(single, fits, ["r18", "r34"], abl)}
    assert verdicts[1]["verdict"] == "direction only (one seed)" and verdicts[1]["pairs"][0]["noise"] is None
    assert "one seed: spread not measured yet" in verdicts[1]["text"]
    assert verdicts[4]["verdict"] == "direction only (one seed)"


def test_extra_seeds_add_named_points_last_and_refuse_unknown_names(tmp_path):
    cfg = yaml.safe_load(_tiny_config(tmp_path, tmp_path / "no-data").read_text())
    plain = GRID.build_grid(cfg)
    named = ["cifar_resnet18-plain-sharing-w32-dof300", "cifar_resnet18-rpg-w32-dof300"]
    cfg["extra_seeds"] = {"seeds": [2], "runs": named}
    grid = GRID.build_grid(cfg)
    assert grid[: len(plain)] == plain  # the main seeds first, unchanged
    extra = grid[len(plain) :]
    assert sorted(r["run_id"] for r in extra) == sorted(f"{n}-s2" for n in named)
    assert GRID.fingerprint(GRID.protocol_of(cfg)) == GRID.fingerprint(GRID.protocol_of(
        {k: v for k, v in cfg.items() if k != "extra_seeds"}))  # finished runs stay valid
    cfg["extra_seeds"]["runs"] = ["cifar_resnet18-rpg-w32-dof301"]
    with pytest.raises(ValueError, match="dof301"):
        GRID.build_grid(cfg)
