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


def chunk_slowly_noting(jobs: Sequence[ParseJob]) -> list[ParsedMessage | Exception]:
    """Parses a chunk in 50 ms at least and appends its first job's key to the file named by the
    environment's MAILROOM_TEST_CHUNK_LOG: the order the worker took the chunks in."""
    import time

    time.sleep(0.05)
    with open(os.environ["MAILROOM_TEST_CHUNK_LOG"], "a") as f:
        f.write(f"{jobs[0].key}\n")
    return _parse_chunk_remote(jobs)
