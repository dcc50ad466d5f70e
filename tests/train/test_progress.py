"""Progress output: a tqdm bar on a terminal, plain periodic lines in a log (no carriage returns)."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn
from tqdm import tqdm

from rpg_hf.train.evaluate import evaluate
from rpg_hf.train.loop import fit
from rpg_hf.train.progress import LineProgress, progress, progress_mode


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def _no_override(monkeypatch):
    monkeypatch.delenv("RPG_HF_PROGRESS", raising=False)
    monkeypatch.delenv("RPG_HF_PROGRESS_INTERVAL", raising=False)


def test_a_terminal_gets_a_bar_a_log_gets_lines():
    assert isinstance(progress(range(3), stream=_Tty()), tqdm)
    assert isinstance(progress(range(3), stream=io.StringIO()), LineProgress)
    assert progress_mode(_Tty()) == "bar" and progress_mode(io.StringIO()) == "lines"


def test_environment_overrides_the_choice(monkeypatch):
    monkeypatch.setenv("RPG_HF_PROGRESS", "lines")
    assert isinstance(progress(range(3), stream=_Tty()), LineProgress)
    monkeypatch.setenv("RPG_HF_PROGRESS", "off")
    log = io.StringIO()
    assert list(progress(range(3), stream=log)) == [0, 1, 2] and log.getvalue() == ""


def test_lines_are_periodic_plain_and_end_with_a_summary():
    log, clock = io.StringIO(), _Clock()
    bar = LineProgress(total=100, desc="train", stream=log, interval=10.0, clock=clock)
    for _ in range(100):
        clock.now += 1.0  # one step a second: a line every 10 steps
        bar.update(1)
        bar.set_postfix(loss="0.500", refresh=False)
    bar.close()
    bar.close()  # idempotent
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert len(lines) == 10  # the 10th line is at step 100: close adds nothing new
    assert lines[0] == "train: 10/100 (10%) 1 it/s, 10s elapsed, ~1m30s left, loss=0.500"
    assert lines[-1] == "train: 100/100 (100%) 1 it/s, 1m40s elapsed, loss=0.500"


def test_iteration_without_total_and_a_final_line():
    log, clock = io.StringIO(), _Clock()
    out = list(LineProgress(iter(range(5)), desc="eval", stream=log, interval=60.0, clock=clock))
    assert out == [0, 1, 2, 3, 4]
    assert log.getvalue() == "eval: 5 0s elapsed\n"


def test_disabled_is_silent():
    log = io.StringIO()
    assert list(progress(range(4), stream=log, disable=True)) == [0, 1, 2, 3]
    assert log.getvalue() == ""


def test_the_training_loop_and_evaluation_write_lines_to_a_log(capsys, monkeypatch):
    monkeypatch.setenv("RPG_HF_PROGRESS_INTERVAL", "0")  # a line per step
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    data = [(torch.randn(2, 4), torch.tensor([0, 1])) for _ in range(3)]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    fit(model, opt, lambda epoch, done: iter(data[done:]), total_steps=3, steps_per_epoch=3, desc="train")
    evaluate(model, data, progress=True, ks=(1,))
    err = capsys.readouterr().err  # pytest's capture is not a terminal: what a log file gets
    assert "\r" not in err
    assert "train: 3/3 (100%)" in err and "loss=" in err
    assert "eval: 3/3 (100%)" in err
