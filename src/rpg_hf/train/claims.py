"""Work sharing without a scheduler: processes — on one machine or several, now or in a later
session — take independent jobs (the science sweep's runs) one at a time through claim files.

A claim is ``<claims_dir>/<job>``, created exclusively and holding ``"<host> <pid> <start>"``
(``<start>``: the boot id and the process's start tick, where ``/proc`` has them); a claim whose
process is gone — same host, and no such pid, or a pid now reused by another process (a later
session, a reboot) — is taken over.  The claimer deletes it when done.
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path


def _start(pid: int) -> str:
    """Boot id + start tick of ``pid`` (``-`` where /proc does not tell): a pid's identity over time."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        stat = Path(f"/proc/{pid}/stat").read_text()
        return f"{boot}:{stat.rsplit(')', 1)[1].split()[19]}"  # field 22, after the parenthesised name
    except (OSError, IndexError):
        return "-"


def _alive(claim: Path) -> bool:
    try:
        host, pid, *start = claim.read_text().split()
        pid = int(pid)
    except (OSError, ValueError):
        return False  # unreadable or not a claim: take it over
    if len(start) > 1:
        return False
    if host != socket.gethostname():
        return True  # another machine's claim: trust it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not start or start[0] == "-" or start[0] == _start(pid)


def claim(claims_dir: Path, job: str) -> bool:
    """Take ``job`` for this process: an exclusive claim file; a dead process's claim is taken over."""
    claims_dir.mkdir(parents=True, exist_ok=True)
    path = claims_dir / job
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            if _alive(path):
                return False
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{socket.gethostname()} {os.getpid()} {_start(os.getpid())}\n")
        return True
    return False
