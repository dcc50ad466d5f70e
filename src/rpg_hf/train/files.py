"""Files a run writes — JSON and text, written atomically (a reader never sees half a file) — and
the description of the machine a run record carries."""

from __future__ import annotations

import contextlib
import json
import os
import platform
from pathlib import Path
from typing import Any


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file of this process, then a rename: a killed
    run never leaves a half-written file behind, nor do two writers."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """Write ``data`` as indented JSON to ``path`` (atomically, :func:`write_text`)."""
    return write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def cpu_name() -> str:
    """The CPU's model name: ``/proc/cpuinfo``'s ``model name`` (else its ``Hardware`` / named
    ``processor`` line, as on ARM), else what :mod:`platform` knows."""
    with contextlib.suppress(OSError):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        for keys in (("model name",), ("hardware", "processor\t: ")):
            for line in lines:
                if line.lower().startswith(keys) and ":" in line:
                    name = line.split(":", 1)[1].strip()
                    if name and not name.isdigit():
                        return name
    return platform.processor() or platform.machine() or "unknown"


def device_name(device: Any = "cpu") -> str:
    """What a run record says about the device: the CUDA device's name, else
    ``"cpu (<cpu name>; <torch threads> thread(s))"``."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({cpu_name()}; {torch.get_num_threads()} thread(s))"
