"""Smoke tests of the benchmark harness (benchmarks/): it runs, its output format holds, ``--check`` exits as
documented.  No timing is asserted — the workloads are minuscule and the figures meaningless."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
TINY = ["--device", "cpu", "--models", "test_resnet", "--res", "32", "--batch", "2", "--repeats", "2",
        "--steps", "1", "--warmup", "1", "--dofs", "1000", "--gen-reps", "1", "--threads", "1"]


def _env() -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("RPG_HF_BACKEND", None)
    return env


def _run(script: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True,
                          env=_env(), timeout=timeout, cwd=ROOT)


def _check_format(out: str) -> None:
    header = out.splitlines()[0]
    assert header.startswith("# step_time v2 | "), header
    facts = dict(kv.split("=", 1) for kv in header[len("# step_time v2 | "):].split(" | "))
    for key in ("device", "cpu", "threads", "torch", "timm", "rpg_hf", "backend", "repeats", "compile", "cmd"):
        assert key in facts, (key, header)
    assert facts["device"] == "cpu" and facts["threads"] == "1" and facts["repeats"] == "2"
    for section in ("## eager", "## memory and generation", "## summary"):
        assert section in out, section
    eager = out.split("## eager", 1)[1].split("##", 1)[0]
    row = next(line for line in eager.splitlines() if line.startswith("test_resnet"))
    fields = row.split()
    assert fields[:4] == ["test_resnet", "1000", "2", "32"], row
    vanilla_ms, rpg_ms, ratio, lo, hi = map(float, fields[4:9])
    assert vanilla_ms > 0 and rpg_ms > 0 and lo <= ratio <= hi, row
    summary = out.split("## summary", 1)[1]
    assert re.search(r"^test_resnet\s+1000\s+\d+\.\d{3} \[\d+\.\d{3}-\d+\.\d{3}\]", summary, re.M), summary


def test_step_time_check_passes_and_writes_json(tmp_path):
    path = tmp_path / "st.json"
    proc = _run("step_time.py", *TINY, "--check", "1e9", "--json", str(path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _check_format(proc.stdout)
    assert "CHECK OK (--check 1e+09)" in proc.stdout
    data = json.loads(path.read_text())
    assert data["format"] == "step_time v2" and data["environment"]["threads"] == 1
    (res,) = data["results"]
    e = res["eager"]
    assert res["model"] == "test_resnet" and res["dof"] == 1000 and res["backend"] in ("cpu", "torch")
    assert len(e["pair_ratios"]) == 2 == len(e["vanilla_turns_ms"]) == len(e["rpg_turns_ms"])
    assert e["ratio_min"] <= e["ratio"] <= e["ratio_max"] and res["generated"] > 0


def test_step_time_check_fails_above_the_limit():
    proc = _run("step_time.py", *TINY, "--check", "1e-9")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    _check_format(proc.stdout)
    assert re.search(r"^CHECK FAILED \(--check 1e-09\): test_resnet dof=1000 eager median ratio", proc.stdout, re.M)


def test_gpu_scripts_parse():
    for script in ("gpu_check.sh", "prepare_gpu_carry.sh"):
        subprocess.run(["bash", "-n", str(BENCH / script)], check=True)


def test_golden_expansion_matches_the_stored_hashes(tmp_path):
    """The dry-run form of gpu_check's golden part: CPU C kernels == reference, hashes == the stored ones."""
    proc = _run("gpu_golden.py", "--device", "cpu", "--configs", "test_resnet@1000", "--json", str(tmp_path / "g.json"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((tmp_path / "g.json").read_text())
    assert data["failed"] == 0 and data["passed"] >= 7, data
    passed = [r["check"] for r in data["results"] if r["status"] == "PASS"]
    for version in (1, 2):  # both generator versions: 3 stored hashes each
        assert sum(c.startswith(f"v{version} ") and "sha256 == stored" in c for c in passed) == 3, data
        # the golden layouts against tests/core/spec_v<version>.py (loaded by path): run, not skipped as a note
        assert sum(f"tests/core/spec_v{version}.py" in c for c in passed) == 3, data


def test_step_time_modules_import_as_a_package(capsys):
    """benchmarks/ is importable as ``benchmarks.<name>`` from the repository root (as recipes/): the
    per-pair ratio statistics and the ``--check`` verdicts, without timing anything."""
    import importlib

    step_time = importlib.import_module("benchmarks.step_time")
    measure = importlib.import_module("benchmarks.step_measure")
    report = importlib.import_module("benchmarks.step_report")
    assert step_time.Bench is measure.Bench
    s = measure.ratio_stats([10.0, 10.0, 20.0], [11.0, 12.0, 20.0])
    assert s["pair_ratios"] == [1.1, 1.2, 1.0] and s["ratio"] == 1.1 and (s["ratio_min"], s["ratio_max"]) == (1.0, 1.2)
    row = {"model": "m", "dof": 5, "batch": 2, "res": 32, "eager": s, "compiled": None}
    rows = {("m", 5): row}
    assert report.check(rows, {"eager": 1.15, "compiled": None}) == 0
    assert report.check(rows, {"eager": 1.05, "compiled": None}) == 1
    assert report.check(rows, {"eager": None, "compiled": 9.0}) == 1  # no compiled measurement
    out = capsys.readouterr().out
    assert "CHECK OK (--check 1.15)" in out and "CHECK FAILED (--check 1.05): m dof=5 eager median ratio 1.100" in out
    assert "CHECK FAILED (--check-compiled 9): m dof=5 has no compiled measurement" in out


@pytest.mark.slow
def test_step_time_compiled_pass():
    proc = _run("step_time.py", *TINY, "--compile", "--compile-backend", "aot_eager", "--check-compiled", "1e9")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _check_format(proc.stdout)
    compiled = proc.stdout.split("## compiled", 1)[1].split("##", 1)[0]
    assert re.search(r"^test_resnet\s+1000\s+2\s+32\s+[\d.]+\s+[\d.]+\s+\d+\.\d{3}", compiled, re.M), compiled
    assert "CHECK OK (--check-compiled 1e+09)" in proc.stdout


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("timeout") is None, reason="needs coreutils timeout")
def test_gpu_check_cpu_dry_run(tmp_path):
    """benchmarks/gpu_check.sh end to end on the CPU (GPU_CHECK_ALLOW_CPU=1), without the kernel tests
    (they run in this suite already)."""
    out = tmp_path / "out"
    env = {**_env(), "GPU_CHECK_ALLOW_CPU": "1", "GPU_CHECK_PARTS": "golden,bench", "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(BENCH / "gpu_check.sh"), str(out)], capture_output=True, text=True, env=env,
                          timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "overall: PASS" in proc.stdout and "CPU dry run" in proc.stdout
    names = {p.name for p in out.iterdir()}
    assert {"setup.log", "golden.log", "golden.json", "step_time.log", "step_time.json", "summary.txt"} <= names
    assert len(names) <= 8  # the device tool brings back at most 8 files
