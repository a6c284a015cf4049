"""Processes left behind: a command under test runs in a session of its own
(``subprocess.Popen(..., start_new_session=True)``), so everything it started (parse workers, the
pipeline process, their helpers) is still found by that session once it has been killed."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path


def session_processes(sid: int) -> dict[int, str]:
    """Live (not zombie) processes of session ``sid``, with their command lines."""
    found: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            found[int(entry)] = cmdline.strip()
    return found


def wait_session_gone(sid: int, timeout: float) -> dict[int, str]:
    """What of session ``sid`` was still running after ``timeout`` seconds ({} as soon as nothing
    is). Those are then killed, so that a failing test leaves nothing behind either."""
    deadline = time.monotonic() + timeout
    while (left := session_processes(sid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return left


def descendants(pid: int) -> dict[int, str]:
    """Live processes below ``pid`` (children, theirs, ...), whatever their session."""
    parent_of: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if fields[0] != "Z":
                parent_of[int(entry)] = int(fields[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {p for p, pp in parent_of.items() if pp in frontier and p not in found}
        found |= frontier
    return {p: _cmdline(p) for p in found}


def wait_gone(pids: dict[int, str], timeout: float) -> dict[int, str]:
    """Which of ``pids`` were still running after ``timeout`` seconds; those are then killed."""
    deadline = time.monotonic() + timeout
    while (left := {p: c for p, c in pids.items() if _alive(p)}) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return left


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""
