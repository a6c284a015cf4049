"""The sync engine of one process: a runner thread per mailbox it holds a lease on, plus pipeline
workers. ``mailroom serve`` runs one; several processes (or machines, on PostgreSQL) can run side by
side: a mailbox is synced by whoever holds its lease, and a lease that is not renewed expires so
another process takes over (failover)."""

from __future__ import annotations

import logging
import multiprocessing
import os
import socket
import threading
import time
import uuid
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import close_old_connections, connections
from django.db.models import Q
from django.utils import timezone

from mailroom.conversations import pipeline
from mailroom.conversations.models import Message
from mailroom.ingest.imap.worker import MailboxRunner
from mailroom.mailboxes.models import Mailbox

log = logging.getLogger(__name__)

LEASE_SECONDS = 60
SWEEP_SECONDS = 15.0
_current: SyncEngine | None = None


def current_engine() -> SyncEngine | None:
    """The engine running in this process, if any (the API kicks it on changes)."""
    return _current


def new_owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def lease_claim(*, mailbox_id: int, owner: str) -> bool:
    now = timezone.now()
    return bool(
        Mailbox.objects.filter(pk=mailbox_id)
        .filter(Q(lease_owner="") | Q(lease_owner=owner) | Q(lease_expires_at__lt=now))
        .update(lease_owner=owner, lease_expires_at=now + timedelta(seconds=LEASE_SECONDS))
    )


def lease_release(*, owner: str) -> None:
    Mailbox.objects.filter(lease_owner=owner).update(lease_owner="", lease_expires_at=None)


class PipelineWorker(threading.Thread):
    """Parses and links stored messages. Woken on commit; sweeps every few seconds anyway."""

    def __init__(self, stop: threading.Event, *, sweep_seconds: float = 3.0, name: str = "pipeline") -> None:
        super().__init__(name=name, daemon=True)
        self.stop_event = stop
        self.wake = threading.Event()
        self.sweep_seconds = sweep_seconds

    def run(self) -> None:
        try:
            self._run()
        finally:
            connections.close_all()

    def _run(self) -> None:
        while not self.stop_event.is_set():
            self.wake.wait(self.sweep_seconds)
            self.wake.clear()
            try:
                while not self.stop_event.is_set() and pipeline.process_pending() > 0:
                    pass
            except Exception:
                log.exception("pipeline.sweep_failed")
            finally:
                close_old_connections()


class SyncEngine:
    def __init__(self, *, reconcile_seconds: float = 3.0, idle_seconds: float = 25.0, pipeline_workers: int = 2) -> None:
        self.owner = new_owner_id()
        self.stop_event = threading.Event()
        self.runners: dict[int, MailboxRunner] = {}
        self.reconcile_seconds = reconcile_seconds
        self.idle_seconds = idle_seconds
        # With Celery the pipeline runs in the Celery workers; this process only syncs and sweeps.
        # Two pipeline threads take turns at the stages: one links a batch while the parse worker
        # processes have the next one parsed.
        self.celery = settings.MAILROOM_TASKS == "celery"
        # Where parse workers are configured, the pipeline runs in a process of its own (as beside
        # `sync --once`): in this one it competed with the import, the web and the API for one
        # interpreter lock (bench/import_bench.py, `mailroom serve`: see docs/architecture.md).
        self.own_process = (
            not self.celery and pipeline_workers > 0 and settings.MAILROOM_PARSE_PROCESSES > 0
            and not multiprocessing.current_process().daemon
        )
        self.pipeline_workers = pipeline_workers
        self.workers = (
            [] if self.celery or self.own_process
            else [PipelineWorker(self.stop_event, name=f"pipeline-{i}") for i in range(pipeline_workers)]
        )
        self._process: Any = None
        self._process_stop: Any = None
        self._process_wake: Any = None
        self._last_sweep = 0.0
        self._wakeup = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sync-engine", daemon=True)

    def start(self) -> None:
        global _current
        _current = self
        for w in self.workers:
            w.start()
        if self.own_process:
            self._start_process()
        elif not self.celery:
            from mailroom.parsing.workers import parse_pool

            # Started now: the first new message does not wait for the workers' start-up.
            parse_pool(settings.MAILROOM_PARSE_PROCESSES, settings.MAILROOM_PARSE_DEADLINE).warm()
        if not self.celery:
            pipeline.on_wake(self.wake_pipeline)
        self._thread.start()

    def _start_process(self) -> None:
        from mailroom.conversations.background import engine_pipeline_process

        ctx = multiprocessing.get_context("spawn")  # never fork a process with threads and connections
        self._process_stop, self._process_wake = ctx.Event(), ctx.Event()
        self._process = ctx.Process(
            target=engine_pipeline_process,
            args=(pipeline.child_settings(), self._process_stop, self._process_wake, os.getpid(), self.pipeline_workers),
            name="mailroom-pipeline",
        )
        self._process.start()

    def _check_process(self) -> None:
        """A pipeline process that died (killed, out of memory) is started again: the database says
        what is pending, so nothing is lost."""
        if self._process is not None and not self._process.is_alive() and not self.stop_event.is_set():
            log.warning("engine.pipeline_process_died", extra={"exitcode": self._process.exitcode})
            self._start_process()

    def wake_pipeline(self) -> None:
        for w in self.workers:
            w.wake.set()
        if self._process_wake is not None:
            self._process_wake.set()

    def kick(self, mailbox_id: int) -> None:
        """Sync this mailbox now (a new mailbox is picked up at once, a backing-off one retried)."""
        runner = self.runners.get(mailbox_id)
        if runner is not None:
            runner.kick_event.set()
        else:
            self._wakeup.set()

    def stop(self, timeout: float = 5.0) -> None:
        global _current
        if _current is self:
            _current = None
        self.stop_event.set()
        self._wakeup.set()
        for r in self.runners.values():
            r.kick_event.set()
        self._thread.join(timeout)
        # Wait for the mailbox runners and pipeline workers: nothing may touch the database after
        # stop() returns (a test's flush, a clean shutdown).
        deadline = time.monotonic() + timeout
        for t in [*self.runners.values(), *self.workers]:
            t.join(max(0.1, deadline - time.monotonic()))
        if not self.celery:
            pipeline.remove_wake_callback(self.wake_pipeline)
        if self._process is not None:
            self._process_stop.set()
            self._process_wake.set()
            # It finishes the batch it is on (committed, or rolled back and done again later).
            self._process.join(max(1.0, deadline - time.monotonic()) + 25.0)
            if self._process.is_alive():
                self._process.kill()
                self._process.join()
        try:
            lease_release(owner=self.owner)
        except Exception:
            log.exception("engine.lease_release_failed")

    def reconcile(self) -> None:
        wanted = set(Mailbox.objects.filter(sync_enabled=True).values_list("id", flat=True))
        # Renew what we hold; drop runners whose lease another process took over.
        Mailbox.objects.filter(lease_owner=self.owner).update(
            lease_expires_at=timezone.now() + timedelta(seconds=LEASE_SECONDS)
        )
        for mid, runner in list(self.runners.items()):
            if not runner.is_alive() or mid not in wanted:
                self.runners.pop(mid)
        for mid in wanted - set(self.runners):
            if lease_claim(mailbox_id=mid, owner=self.owner):
                runner = MailboxRunner(mid, self.stop_event, idle_seconds=self.idle_seconds)
                self.runners[mid] = runner
                runner.start()

    def sweep(self) -> None:
        """Re-drive work left behind (a lost wake-up, a worker that died): the database says what is
        pending; in Celery mode a task is sent, in-process the workers are woken."""
        if Message.objects.filter(state__in=(Message.State.STORED, Message.State.PARSED)).exists():
            if self.celery:
                pipeline.wake_pipeline()
            else:
                self.wake_pipeline()

    def _loop(self) -> None:
        while not self.stop_event.is_set():
            try:
                self._check_process()
                if time.monotonic() - self._last_sweep > SWEEP_SECONDS:
                    self._last_sweep = time.monotonic()
                    self.sweep()
                self.reconcile()
            except Exception:
                log.exception("engine.reconcile_failed")
            finally:
                close_old_connections()
            self._wakeup.wait(self.reconcile_seconds)
            self._wakeup.clear()
