"""Full parsing in worker processes, beside the process that stores the results.

Parsing is pure CPU work in Python: in the process that also syncs IMAP and writes the database it
competes for one interpreter lock, so on a machine with several cores most of it runs in a small pool
of worker processes (``MAILROOM_PARSE_PROCESSES``; the default is one per spare core) while the
calling thread parses a share itself and its process stores and links (``pipeline.drain`` links one
batch while the next is parsed). The workers import this package only (no Django, no
database): they get bytes and return :class:`ParsedMessage` objects or the error text.

A worker that dies (a crash in a C extension, the kernel's OOM killer) fails only the messages of
its chunk, each with one attempt counted, and the pool is started afresh: the pipeline's
quarantine takes a message that keeps killing workers out of the way.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

from mailroom.parsing.mime import ParsedMessage, parse_message

log = logging.getLogger(__name__)

CHUNK = 8  # messages per task: enough to amortise the hand-over, small enough to balance


@dataclass(frozen=True, slots=True)
class ParseJob:
    key: int  # the caller's id for the message
    raw: bytes
    received_at: datetime | None
    trusted_authserv_ids: tuple[str, ...]


class WorkerDied(Exception):
    """The worker process parsing this message died."""


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
        return parse_message(job.raw, received_at=job.received_at, trusted_authserv_ids=job.trusted_authserv_ids)
    except Exception as exc:  # returned, not raised: one bad message must not fail its chunk
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


class ParsePool:
    def __init__(
        self, processes: int, remote: Callable[[Sequence[ParseJob]], list[ParsedMessage | Exception]] | None = None
    ) -> None:
        self.processes = processes
        self.remote = remote or _parse_chunk_remote  # what a worker runs on a chunk (a module-level function)
        # The calling thread parses a share itself while the workers parse the rest: measured with one
        # worker on 2 cores (bench/import_bench.py), 0.35-0.5 of a batch kept both processes busiest
        # (the caller also stores and links; a share of 0 left the worker waiting between batches).
        self.own_share = 0.8 / (processes + 1) if processes > 0 else 1.0
        self._executor: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def _get(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._executor is None:
                # "spawn": never fork a process that runs threads and holds database connections.
                self._executor = ProcessPoolExecutor(self.processes, mp_context=multiprocessing.get_context("spawn"))
            return self._executor

    def _reset(self, broken: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._executor is broken:
                self._executor = None
        broken.shutdown(wait=False, cancel_futures=True)

    @contextmanager
    def sharing(self, share: float) -> Iterator[None]:
        """Parse ``share`` of each batch in the calling thread for a while (0: all in the workers,
        e.g. while an import needs this process's interpreter); only with workers."""
        previous = self.own_share
        if self.processes > 0:
            self.own_share = share
        try:
            yield
        finally:
            self.own_share = previous

    def shutdown(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)

    def parse(self, jobs: Sequence[ParseJob]) -> list[ParsedMessage | Exception]:
        """Parse ``jobs`` (results in order): most in the worker processes, a share and small batches
        in this thread."""
        if self.processes <= 0 or len(jobs) < 2 * CHUNK:
            return parse_chunk(jobs)
        executor = self._get()
        own = int(len(jobs) * self.own_share)  # parsed here while the workers parse the rest
        futures: list[tuple[int, Future[list[ParsedMessage | Exception]]]] = []
        try:
            for start in range(own, len(jobs), CHUNK):
                futures.append((start, executor.submit(self.remote, jobs[start : start + CHUNK])))
        except (BrokenProcessPool, RuntimeError) as exc:  # broken before we began: parse here
            log.warning("parse_pool.unavailable", extra={"error": str(exc)})
            self._reset(executor)
            for _, f in futures:
                f.cancel()
            return parse_chunk(jobs)
        results: list[ParsedMessage | Exception | None] = [*parse_chunk(jobs[:own]), *([None] * (len(jobs) - own))]
        lost: list[int] = []  # indexes of jobs whose worker died (a dead worker breaks every pending task)
        for start, future in futures:
            try:
                results[start : start + CHUNK] = future.result()
            except BrokenProcessPool:
                lost.extend(range(start, min(start + CHUNK, len(jobs))))
        if lost:
            log.warning("parse_pool.worker_died", extra={"messages": len(lost)})
            self._reset(executor)
            for i in lost:  # one at a time in a fresh pool: only the message that kills it fails
                results[i] = self._parse_alone(jobs[i])
        return [r if r is not None else WorkerDied("no result") for r in results]

    def _parse_alone(self, job: ParseJob) -> ParsedMessage | Exception:
        executor = self._get()
        try:
            return executor.submit(self.remote, [job]).result()[0]
        except BrokenProcessPool:
            self._reset(executor)
            return WorkerDied("the parser process died while parsing this message")


_pool: ParsePool | None = None
_pool_lock = threading.Lock()


def parse_pool(processes: int) -> ParsePool:
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
        return _pool
