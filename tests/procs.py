"""Processes left behind: a command under test runs in a session of its own
(``subprocess.Popen(..., start_new_session=True)``), so everything it started (parse workers, the
pipeline process, their helpers) is still found by that session once it has been killed."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from mailroom.testing.servers import live_processes, process_alive, process_tree


def session_processes(sid: int) -> dict[int, str]:
    """Live (not zombie) processes of session ``sid``, with their command lines."""
    return {pid: _cmdline(pid) for pid, fields in live_processes().items() if int(fields[3]) == sid}


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
    return {p: _cmdline(p) for p in process_tree(pid) - {pid}}


def wait_gone(pids: dict[int, str], timeout: float) -> dict[int, str]:
    """Which of ``pids`` were still running after ``timeout`` seconds; those are then killed."""
    deadline = time.monotonic() + timeout
    while (left := {p: c for p, c in pids.items() if process_alive(p)}) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return left


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""
