"""Full parsing in worker processes: the same results as in-process, failures per message."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from mailroom.parsing.mime import parse_message
from mailroom.parsing.workers import CHUNK, ParseFailed, ParseJob, ParsePool, WorkerDied

from .helpers import corpus_files
from .killer import chunk_or_die


@pytest.fixture(scope="module")
def pool() -> Iterator[ParsePool]:
    p = ParsePool(1)
    yield p
    p.shutdown()


def _jobs(n: int) -> list[ParseJob]:
    files = [f for f in corpus_files("imap-tools") if f.suffix == ".eml"][:n]
    assert len(files) == n
    return [ParseJob(i, f.read_bytes(), None, ()) for i, f in enumerate(files)]


def test_the_pool_gives_what_parsing_in_process_gives(pool: ParsePool) -> None:
    jobs = _jobs(5 * CHUNK)
    assert pool.parse(jobs) == [parse_message(j.raw) for j in jobs]


def test_a_parser_error_comes_back_for_its_message_only(pool: ParsePool) -> None:
    jobs = _jobs(3 * CHUNK)
    broken = ParseJob(99, None, None, ())  # type: ignore[arg-type]
    jobs.insert(2 * CHUNK + 1, broken)  # in the workers' share
    results = pool.parse(jobs)
    failed = [r for r in results if isinstance(r, Exception)]
    assert len(results) == len(jobs) and len(failed) == 1
    assert isinstance(results[2 * CHUNK + 1], ParseFailed)
    assert str(results[2 * CHUNK + 1]).startswith("TypeError: ")
    assert "Traceback" in failed[0].trace  # type: ignore[attr-defined]


def test_a_dying_worker_fails_only_the_message_that_kills_it() -> None:
    pool = ParsePool(1, remote=chunk_or_die)
    try:
        jobs = _jobs(4 * CHUNK)
        killer = 3 * CHUNK + 2
        jobs[killer] = ParseJob(killer, b"KILL\r\n\r\n", None, ())
        results = pool.parse(jobs)
        assert [i for i, r in enumerate(results) if isinstance(r, Exception)] == [killer]
        assert isinstance(results[killer], WorkerDied)
        expected: list[Any] = [parse_message(j.raw) for j in jobs]
        assert [r for i, r in enumerate(results) if i != killer] == [e for i, e in enumerate(expected) if i != killer]
        # The pool works again afterwards.
        assert pool.parse(_jobs(3 * CHUNK)) == [parse_message(j.raw) for j in _jobs(3 * CHUNK)]
    finally:
        pool.shutdown()


def test_small_batches_and_no_workers_parse_in_process() -> None:
    jobs = _jobs(CHUNK)
    assert ParsePool(1).parse(jobs) == ParsePool(0).parse(jobs) == [parse_message(j.raw) for j in jobs]
