"""Full parsing in worker processes: the same results as in-process, failures per message."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mailroom.parsing.headers import summarize_headers
from mailroom.parsing.mime import ParsedMessage, parse_message
from mailroom.parsing.workers import CHUNK, ParseFailed, ParseJob, ParsePool, ParseTimeout, WorkerDied
from mailroom.testing.servers import process_alive

from .helpers import corpus_files
from .killer import chunk_or_die, chunk_or_hang, chunk_slowly_noting


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


def _workers(pool: ParsePool) -> set[int]:
    assert pool._executor is not None
    return {p.pid for p in pool._executor._processes.values()}  # type: ignore[attr-defined]


def test_a_stuck_parse_is_killed_at_the_deadline_and_fails_only_its_message() -> None:
    pool = ParsePool(1, remote=chunk_or_hang, deadline=2)
    try:
        jobs = _jobs(4 * CHUNK)
        stuck = 2 * CHUNK + 3
        jobs[stuck] = ParseJob(stuck, b"HANG\r\n\r\n", None, ())
        pool.warm()
        before = _workers(pool)
        results = pool.parse(jobs)
        assert [i for i, r in enumerate(results) if isinstance(r, Exception)] == [stuck]
        assert isinstance(results[stuck], ParseTimeout)
        assert str(results[stuck]) == "parsing ran past the 2 s deadline: the parser process was stopped"
        expected: list[Any] = [parse_message(j.raw) for j in jobs]
        assert [r for i, r in enumerate(results) if i != stuck] == [e for i, e in enumerate(expected) if i != stuck]
        assert not any(process_alive(pid) for pid in before), "the stuck worker was not killed"
        # A fresh worker parses what comes next.
        assert pool.parse(_jobs(2)) == [parse_message(j.raw) for j in _jobs(2)]
    finally:
        pool.shutdown()


def test_a_single_message_is_parsed_under_the_deadline_too() -> None:
    """The first message of a quiet mailbox (a batch of one) is not parsed in the calling thread."""
    pool = ParsePool(1, remote=chunk_or_hang, deadline=1)
    try:
        (result,) = pool.parse([ParseJob(1, b"HANG\r\n\r\n", None, ())])
        assert isinstance(result, ParseTimeout)
    finally:
        pool.shutdown()


def test_small_batches_and_no_workers_parse_in_process() -> None:
    jobs = _jobs(CHUNK)
    assert ParsePool(1).parse(jobs) == ParsePool(0).parse(jobs) == [parse_message(j.raw) for j in jobs]


def test_the_workers_read_the_bytes_from_the_raw_store_themselves(pool: ParsePool, tmp_path: Path) -> None:
    from mailroom.core.blobs import store_at

    raws = [j.raw for j in _jobs(4 * CHUNK)]
    refs = store_at(tmp_path).append(raws)
    jobs = [ParseJob(i, b"", None, (), blob=ref, blob_dir=str(tmp_path)) for i, ref in enumerate(refs)]
    lost = 3 * CHUNK + 1  # in the workers' share: its segment is not in that folder
    jobs[lost] = ParseJob(lost, b"", None, (), blob="20260101000000-000000000000.seg:0:10", blob_dir=str(tmp_path))
    results = pool.parse(jobs)
    assert [i for i, r in enumerate(results) if isinstance(r, Exception)] == [lost]
    assert str(results[lost]).startswith("BlobError: segment 20260101000000-000000000000.seg is missing from ")
    assert [r for i, r in enumerate(results) if i != lost] == [parse_message(r) for i, r in enumerate(raws) if i != lost]


def test_a_known_content_hash_is_taken_as_it_is() -> None:
    raw = _jobs(1)[0].raw
    computed = parse_message(raw).content_hash
    assert computed == summarize_headers(raw).content_hash
    assert ParsePool(0).parse([ParseJob(1, raw, None, (), content_hash=computed)])[0] == parse_message(raw)
    given = ParsePool(0).parse([ParseJob(1, raw, None, (), content_hash="f" * 64)])[0]
    assert isinstance(given, ParsedMessage) and given.content_hash == "f" * 64


def test_the_workers_exit_when_their_parent_is_killed(tmp_path: Path) -> None:
    script = tmp_path / "parent.py"
    script.write_text(
        "import os, signal\n"
        "from mailroom.parsing.workers import CHUNK, ParseJob, ParsePool\n"
        "if __name__ == '__main__':\n"
        "    pool = ParsePool(1)\n"
        "    raw = b'From: a@example.com\\r\\nSubject: x\\r\\n\\r\\nhello\\r\\n'\n"
        "    assert len(pool.parse([ParseJob(i, raw, None, ()) for i in range(2 * CHUNK)])) == 2 * CHUNK\n"
        "    print(*[p.pid for p in pool._executor._processes.values()], flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    (worker,) = [int(pid) for pid in proc.stdout.split()]
    deadline = time.monotonic() + 15
    while process_alive(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not process_alive(worker), "the parse worker outlived its killed parent"


def test_a_small_batch_waits_behind_a_few_chunks_of_a_large_one_not_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks are handed out WINDOW_PER_PROCESS a worker at a time: a live message's batch, parsed
    by another pipeline thread, is taken after a few chunks of a backlog's batch, not its 40."""
    import threading

    from mailroom.parsing.workers import WINDOW_PER_PROCESS

    log = tmp_path / "chunks"
    monkeypatch.setenv("MAILROOM_TEST_CHUNK_LOG", str(log))
    pool = ParsePool(1, remote=chunk_slowly_noting)
    try:
        pool.warm()
        large = [ParseJob(i, b"Subject: backlog\r\n\r\nx\r\n", None, ()) for i in range(40 * CHUNK)]
        backlog = threading.Thread(target=pool.parse, args=(large,))
        backlog.start()
        deadline = time.monotonic() + 30
        while not log.exists() and time.monotonic() < deadline:  # its first chunk is parsed
            time.sleep(0.01)
        [live] = pool.parse([ParseJob(10_000, b"Subject: live\r\n\r\nx\r\n", None, ())])
        backlog.join()
    finally:
        pool.shutdown()
    assert live.subject == "live"
    order = log.read_text().split()
    assert len(order) == 41
    # Taken after the chunks handed out before it: the window, and the one handed out as the first
    # was collected (not after the 40).
    assert order.index("10000") <= WINDOW_PER_PROCESS + 2
