"""Progress for terminals and for log files: the one helper the demo, the training loop and the recipes use.

tqdm redraws its bar with carriage returns; in a terminal that is one line updated in place, in a
log file (SLURM, CI, ``nohup``, a pipe) it is hundreds of updates glued into one line.  So
:func:`progress` gives a tqdm bar when the stream is a terminal and, otherwise, a
:class:`LineProgress` that prints a plain line at most every ``interval`` seconds (and one at the
end): ``train: 1200/3000 (40%) 3.1 it/s, 6m27s elapsed, ~9m40s left, loss=0.412``.

``RPG_HF_PROGRESS=bar|lines|off`` overrides the choice; ``RPG_HF_PROGRESS_INTERVAL`` (seconds,
default 30) sets the line period.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TextIO

MODE_ENV = "RPG_HF_PROGRESS"
INTERVAL_ENV = "RPG_HF_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 30.0

__all__ = ["LineProgress", "progress", "progress_mode"]


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def progress_mode(stream: TextIO | None = None) -> str:
    """``"bar"`` for a terminal, ``"lines"`` for anything else; ``RPG_HF_PROGRESS`` wins."""
    forced = os.environ.get(MODE_ENV, "").strip().lower()
    if forced in ("bar", "lines", "off"):
        return forced
    stream = stream if stream is not None else sys.stderr
    try:
        return "bar" if stream.isatty() else "lines"
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return "lines"


class LineProgress:
    """A tqdm look-alike (iterate, ``update``, ``set_postfix``, ``close``) that writes plain lines.

    A line at most every ``interval`` seconds while work goes on, and a last one at ``close`` (when
    anything happened since the previous line) — never a carriage return.
    """

    def __init__(self, iterable: Iterable[Any] | None = None, *, total: int | None = None, desc: str | None = None,
                 initial: int = 0, stream: TextIO | None = None, interval: float | None = None,
                 clock: Callable[[], float] = time.monotonic):
        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
        self.iterable, self.total, self.desc, self.n = iterable, total, desc, initial
        self.stream = stream if stream is not None else sys.stderr
        env = os.environ.get(INTERVAL_ENV)
        self.interval = float(interval if interval is not None else env if env else DEFAULT_INTERVAL)
        self.clock = clock
        self.start = self.last = clock()
        self.initial, self.printed_n = initial, initial
        self.postfix = ""
        self.closed = False

    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("LineProgress has no iterable: use update()")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __len__(self) -> int:
        return self.total if self.total is not None else 0

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs: Any) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        if now - self.last >= self.interval:
            self._line(now)

    def refresh(self) -> None:  # tqdm API: a line only when asked for explicitly through close/update
        pass

    def _line(self, now: float) -> None:
        elapsed = now - self.start
        done = self.n - self.initial
        parts = [f"{self.n}/{self.total}" if self.total else f"{self.n}"]
        if self.total:
            parts[0] += f" ({100.0 * self.n / self.total:.0f}%)"
        rate = done / elapsed if elapsed > 0 else 0.0
        timing = [f"{rate:.3g} it/s" if rate else "", f"{_duration(elapsed)} elapsed"]
        if self.total and rate > 0 and self.n < self.total:
            timing.append(f"~{_duration((self.total - self.n) / rate)} left")
        text = " ".join(parts) + " " + ", ".join(t for t in timing if t)
        if self.postfix:
            text += f", {self.postfix}"
        self.stream.write(f"{self.desc}: {text}\n" if self.desc else f"{text}\n")
        self.stream.flush()
        self.last, self.printed_n = now, self.n

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.n != self.printed_n:
            self._line(self.clock())


def progress(iterable: Iterable[Any] | None = None, *, total: int | None = None, desc: str | None = None,
             disable: bool = False, initial: int = 0, leave: bool = True, stream: TextIO | None = None,
             interval: float | None = None, **tqdm_kwargs: Any):
    """A tqdm bar in a terminal, :class:`LineProgress` lines elsewhere, nothing when ``disable``.

    ``stream`` is where progress goes (default ``sys.stderr``, tqdm's); ``tqdm_kwargs`` reach tqdm
    only (``mininterval``, ``unit`` ...).  The same calls work on both (``update``,
    ``set_postfix``, ``close``, iteration).
    """
    mode = "off" if disable else progress_mode(stream)
    if mode == "lines":
        return LineProgress(iterable, total=total, desc=desc, initial=initial, stream=stream, interval=interval)
    from tqdm.auto import tqdm

    tqdm_kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, total=total, desc=desc, initial=initial, leave=leave, file=stream,
                disable=mode == "off", **tqdm_kwargs)
