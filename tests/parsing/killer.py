"""A worker task for tests/parsing/test_workers.py, importable by spawned processes: it kills its
process on a message that says KILL, as a crash in a C extension or the OOM killer would."""

from __future__ import annotations

import os
from collections.abc import Sequence

from mailroom.parsing.mime import ParsedMessage
from mailroom.parsing.workers import ParseJob, _parse_chunk_remote


def chunk_or_die(jobs: Sequence[ParseJob]) -> list[ParsedMessage | Exception]:
    if any(job.raw.startswith(b"KILL") for job in jobs):
        os._exit(9)
    return _parse_chunk_remote(jobs)


def chunk_or_hang(jobs: Sequence[ParseJob]) -> list[ParsedMessage | Exception]:
    """Never returns on a message that says HANG, as a C extension stuck on some input would."""
    if any(job.load().startswith(b"HANG") for job in jobs):
        import time

        while True:
            time.sleep(3600)
    return _parse_chunk_remote(jobs)
