"""Full parsing in worker processes, beside the process that stores the results.

Parsing is pure CPU work in Python: in the process that also syncs IMAP and writes the database it
competes for one interpreter lock, so on a machine with several cores it runs in a small pool of
worker processes (``MAILROOM_PARSE_PROCESSES``; the default is one per spare core) while the calling
process stores and links (``pipeline.drain`` links one batch while the next is parsed). The workers
import this package and ``core.blobs`` only (no Django, no database): they get the bytes, or where
the bytes are in the raw store's segment files (read there, not piped over), and return
:class:`ParsedMessage` objects or the error text.

A worker that dies (a crash in a C extension, the kernel's OOM killer) fails only the messages of
its chunk, each with one attempt counted, and the pool is started afresh: the pipeline's
quarantine takes a message that keeps killing workers out of the way.

Every message is parsed under a hard deadline (``deadline``, ``MAILROOM_PARSE_DEADLINE``): the
parser's own time budget is checked between steps only, so a message that keeps a C extension busy
(or any step we did not foresee) would hold up all the mail behind it. When a chunk has been
running longer than the deadline, the workers are killed and the pool started afresh; the chunk's
messages are then parsed one at a time, each under the deadline, and the one that overruns it
again fails with :class:`ParseTimeout` (one attempt; the pipeline quarantines it after three).
With workers, small batches are parsed there too (the deadline must hold for the first message of
a quiet mailbox as for an import); only ``processes=0`` (or a daemonic process, such as a Celery
prefork child, which may not start processes) parses in the calling thread, without the deadline.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import datetime

from mailroom.core.blobs import store_at
from mailroom.parsing.dns import resolver_for
from mailroom.parsing.mime import ParsedMessage, parse_message

log = logging.getLogger(__name__)

CHUNK = 8  # messages per task: enough to amortise the hand-over, small enough to balance
WINDOW_PER_PROCESS = 2  # chunks of one batch handed out at once, per worker process (ParsePool.parse)
DEFAULT_DEADLINE = 30.0  # seconds a chunk (or a message alone) may run in a worker before it is killed


@dataclass(frozen=True, slots=True)
class ParseJob:
    key: int  # the caller's id for the message
    raw: bytes  # the message, or b"" with ``blob`` set
    received_at: datetime | None
    trusted_authserv_ids: tuple[str, ...]
    # Where the bytes are in the raw store's segment files (core.blobs): the parsing process reads
    # them itself, so that megabytes are not pickled and piped over from the process that stores.
    blob: str = ""
    blob_dir: str = ""
    content_hash: str = ""  # known from the import: not computed again
    # DKIM: verify the signatures, looking the keys up through these DNS servers (empty: the system's).
    verify_dkim: bool = False
    dns_servers: tuple[str, ...] = ()
    dns_timeout: float = 3.0

    def load(self) -> bytes:
        return store_at(self.blob_dir).read(self.blob) if self.blob else self.raw


class WorkerDied(Exception):
    """The worker process parsing this message died."""


class ParseTimeout(WorkerDied):
    """Parsing this message ran past the hard deadline: its worker process was killed."""


class ParseFailed(Exception):
    """A parser exception carried across the process boundary as text (any exception type pickles)."""

    def __init__(self, reason: str, trace: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.trace = trace

    def __reduce__(self) -> tuple[type[ParseFailed], tuple[str, str]]:
        return (ParseFailed, (self.reason, self.trace))


def parse_one(job: ParseJob) -> ParsedMessage | Exception:
    try:
        return parse_message(
            job.load(),
            received_at=job.received_at,
            trusted_authserv_ids=job.trusted_authserv_ids,
            content_hash=job.content_hash or None,
            verify_dkim=job.verify_dkim,
            dnsfunc=resolver_for(job.dns_servers, job.dns_timeout) if job.verify_dkim else None,
        )
    except Exception as exc:  # returned, not raised: one bad message (or a lost segment) must not fail its chunk
        return exc


def _parse_chunk_remote(jobs: Sequence[ParseJob]) -> list[ParsedMessage | Exception]:
    out: list[ParsedMessage | Exception] = []
    for result in parse_chunk(jobs):
        if isinstance(result, Exception):
            result = ParseFailed(f"{type(result).__name__}: {result}", "".join(traceback.format_exception(result)))
        out.append(result)
    return out


def parse_chunk(jobs: Sequence[ParseJob]) -> list[ParsedMessage | Exception]:
    return [parse_one(job) for job in jobs]


def exit_with_parent(parent: int) -> None:
    """In each worker (and the pipeline's process beside an import): exit when the process that
    started it is gone. A worker waits for tasks on a pipe whose writing end it holds itself, so it
    would never see the end of it: a ``kill -9`` of ``mailroom sync`` left its parse workers behind,
    idle, for good. A thread of its own, not a check between steps: the main thread may be blocked
    for good on a lock the killed parent held (a ``multiprocessing.Event``'s)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


class ParsePool:
    def __init__(
        self,
        processes: int,
        remote: Callable[[Sequence[ParseJob]], list[ParsedMessage | Exception]] | None = None,
        deadline: float = DEFAULT_DEADLINE,
    ) -> None:
        self.processes = processes
        self.remote = remote or _parse_chunk_remote  # what a worker runs on a chunk (a module-level function)
        self.deadline = deadline
        self._executor: ProcessPoolExecutor | None = None
        self._ready: list[Future[None]] = []
        self._lock = threading.Lock()

    def _get(self, wait: bool = True) -> ProcessPoolExecutor:
        """The executor, its workers started (and, with ``wait``, ready: their start-up, imports
        included, is not counted against a message's deadline)."""
        with self._lock:
            if self._executor is None:
                # "spawn": never fork a process that runs threads and holds database connections.
                self._executor = ProcessPoolExecutor(
                    self.processes,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=exit_with_parent,
                    initargs=(os.getpid(),),
                )
                # One task per worker starts them all (they are started as tasks come in).
                self._ready = [self._executor.submit(_noop) for _ in range(self.processes)]
            executor, ready = self._executor, self._ready
        if wait:
            for f in ready:
                with contextlib.suppress(Exception):  # a broken start shows on the first real task
                    f.result()
        return executor

    def warm(self) -> None:
        """Start the workers now (their imports take a moment), so that the first message is not
        kept waiting for them."""
        if self.processes > 0:
            self._get(wait=False)

    def _kill(self, executor: ProcessPoolExecutor) -> None:
        """Kill the workers of ``executor`` (one of them is stuck) and start afresh on next use."""
        processes = list(getattr(executor, "_processes", {}).values())
        for proc in processes:
            with contextlib.suppress(Exception):  # already gone
                proc.kill()
        for proc in processes:
            proc.join(5)
        self._reset(executor)

    def _reset(self, broken: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._executor is broken:
                self._executor = None
        broken.shutdown(wait=False, cancel_futures=True)

    def shutdown(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)

    def parse(self, jobs: Sequence[ParseJob]) -> list[ParsedMessage | Exception]:
        """Parse ``jobs`` (results in order) in the worker processes; small batches (a new message
        or two: no hand-over) in this thread.

        The calling process parses nothing of a large batch itself: it stores and links, which keeps
        it busy. Measured with one worker on 2 cores (bench/import_bench.py, 20,000 messages): with
        the caller parsing 40% of each batch, the worker idled half the time after the import while
        the caller's process was saturated (420-535 msgs/s to fully parsed); with none, both were
        busy (520-610 msgs/s)."""
        if self.processes <= 0 or not jobs:
            return parse_chunk(jobs)
        executor = self._get()
        # At most WINDOW_PER_PROCESS chunks a process outstanding, the next one handed out as one is
        # collected: the workers stay busy, and the chunk of another batch (a live message's, the
        # pipeline's priority lane) waits behind a few chunks, not behind the whole of a large one
        # (a batch of 400 was 50 chunks queued at once, seconds of parsing on one worker).
        starts = list(range(0, len(jobs), CHUNK))
        window = max(2, WINDOW_PER_PROCESS * self.processes)
        futures: dict[int, Future[list[ParsedMessage | Exception]]] = {}

        def submit(start: int) -> None:
            futures[start] = executor.submit(self.remote, jobs[start : start + CHUNK])

        try:
            for start in starts[:window]:
                submit(start)
        except (BrokenProcessPool, RuntimeError) as exc:  # broken before we began: parse here
            log.warning("parse_pool.unavailable", extra={"error": str(exc)})
            self._reset(executor)
            for f in futures.values():
                f.cancel()
            return parse_chunk(jobs)
        results: list[ParsedMessage | Exception | None] = [None] * len(jobs)
        lost: list[int] = []  # indexes of jobs whose worker died (a dead worker breaks every pending task)
        # Chunks are handed out in order, so each one has begun by the time the one before it is
        # collected: waiting longer than the deadline for it means it ran longer than that.
        stuck = broken = False
        for n, start in enumerate(starts):
            if n + window < len(starts) and not (stuck or broken):
                try:
                    submit(starts[n + window])
                except (BrokenProcessPool, RuntimeError):  # its worker died: it is collected as lost
                    broken = True
            future = futures.pop(start, None)
            if future is None:  # not handed out: the pool broke or was killed before
                lost.extend(range(start, min(start + CHUNK, len(jobs))))
                continue
            try:
                results[start : start + CHUNK] = future.result(timeout=None if stuck else self.deadline)
            except FutureTimeout:
                stuck = True
                log.warning("parse_pool.deadline", extra={"deadline": self.deadline, "first": jobs[start].key})
                self._kill(executor)
                lost.extend(range(start, min(start + CHUNK, len(jobs))))
            except BrokenProcessPool:
                broken = True
                lost.extend(range(start, min(start + CHUNK, len(jobs))))
        if lost:
            if not stuck:
                log.warning("parse_pool.worker_died", extra={"messages": len(lost)})
            self._reset(executor)
            for i in lost:  # one at a time in a fresh pool: only the message that kills it fails
                results[i] = self._parse_alone(jobs[i])
        return [r if r is not None else WorkerDied("no result") for r in results]

    def _parse_alone(self, job: ParseJob) -> ParsedMessage | Exception:
        executor = self._get()
        try:
            return executor.submit(self.remote, [job]).result(timeout=self.deadline)[0]
        except FutureTimeout:
            self._kill(executor)
            return ParseTimeout(
                f"parsing ran past the {self.deadline:g} s deadline: the parser process was stopped"
            )
        except BrokenProcessPool:
            self._reset(executor)
            return WorkerDied("the parser process died while parsing this message")


def _noop() -> None:
    return None


_pool: ParsePool | None = None
_pool_lock = threading.Lock()


def parse_pool(processes: int, deadline: float | None = None) -> ParsePool:
    """The process-wide pool (started on first use; a daemonic process, such as a Celery prefork
    child, cannot have children and parses in-process)."""
    global _pool
    if multiprocessing.current_process().daemon:
        processes = 0
    with _pool_lock:
        if _pool is None or _pool.processes != processes:
            if _pool is not None:
                _pool.shutdown()
            _pool = ParsePool(processes)
        if deadline is not None:
            _pool.deadline = deadline
        return _pool
