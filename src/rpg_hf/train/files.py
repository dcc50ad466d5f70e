"""Files a run writes: JSON written atomically, and the recipe's numbered checkpoint folders."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHECKPOINT_PREFIX = "step_"

@dataclass
class TrainState:
    """Progress saved beside every checkpoint (``train_state.json``, written when the checkpoint is complete)."""

    step: int = 0  # optimizer steps done; the epoch is step // steps_per_epoch
    samples: int = 0  # training images seen, all processes together

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step, "samples": self.samples}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.step, self.samples = int(state["step"]), int(state.get("samples", 0))


def checkpoint_dirs(root: str | os.PathLike[str]) -> list[Path]:
    """``<root>/step_<n>`` folders that hold a completed checkpoint, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = re.fullmatch(rf"{CHECKPOINT_PREFIX}(\d+)", p.name)
        if m and p.is_dir() and (p / "train_state.json").is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(root: str | os.PathLike[str]) -> Path | None:
    dirs = checkpoint_dirs(root)
    return dirs[-1] if dirs else None


def prune_checkpoints(root: str | os.PathLike[str], keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints (``keep <= 0``: keep all); returns the deleted."""
    import shutil

    dirs = checkpoint_dirs(root)
    doomed = dirs[:-keep] if keep > 0 else []
    for p in doomed:
        shutil.rmtree(p, ignore_errors=True)
    return doomed


def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)
    return path
