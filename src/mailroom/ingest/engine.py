"""The sync engine of one process: a runner thread per mailbox it holds a lease on, plus pipeline
workers. ``mailroom serve`` runs one (inline mode); with ``MAILROOM_TASKS=celery`` every ``mailroom
worker`` runs one and ``serve`` runs none. Several processes (or machines, on PostgreSQL) run side by
side and share the mailboxes (``ingest/leases.py``):

* every reconcile (a few seconds) the engine heartbeats in the registry of live engines
  (``EngineNode``; a clean stop deletes its row, a row older than the lease time is a dead engine)
  and renews its leases;
* its **share** is ceil(M / N) of the M sync-enabled mailboxes among the N live engines. Below it, it
  claims free or expired mailboxes (the ones it holds first, then by id); above it (an engine
  joined), it hands the extra ones back, highest ids first: it stops their runners FIRST (joined)
  and only then releases their leases, so that whoever claims them next never syncs beside us;
* a lease that is not renewed expires after ``MAILROOM_LEASE_SECONDS`` and another engine takes the
  mailbox over (failover);
* **fencing**: every commit of a runner renews its lease inside the commit's transaction, or finds it
  taken over and rolls back (``LeaseLost``; the runner ends): an engine paused past its lease never
  commits beside the new owner.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from typing import Any

from django.conf import settings
from django.db import close_old_connections, connections
from django.db.models import Q
from django.utils import timezone

from mailroom.conversations import pipeline
from mailroom.conversations.models import Message
from mailroom.ingest.imap.worker import MailboxRunner, SyncSlots
from mailroom.ingest.leases import (
    fair_share,
    lease_claim,
    lease_release,
    lease_renew,
    lease_seconds,
    live_nodes,
    new_owner_id,
    node_heartbeat,
    node_remove,
)
from mailroom.mailboxes.models import Mailbox

log = logging.getLogger(__name__)

__all__ = ["SyncEngine", "current_engine", "lease_claim", "lease_release", "new_owner_id"]

SWEEP_SECONDS = 15.0
LINK_EVERY = 2.0  # seconds: see PipelineWorker
DRAIN_SECONDS = 5.0  # at most this long per reconcile waiting for handed-back runners to stop
_current: SyncEngine | None = None


def current_engine() -> SyncEngine | None:
    """The engine running in this process, if any (the API kicks it on changes)."""
    return _current


class PipelineWorker(threading.Thread):
    """Parses and links stored messages. Woken on commit; sweeps every few seconds anyway.

    With ``parse_first`` (the engine's pipeline process) it parses while there is anything to parse
    and links a batch only when parsing has caught up or ``LINK_EVERY`` seconds have passed: during
    a backlog import the import, which takes the database's write lock for each batch it commits,
    waits less for linking's long transactions (as beside ``sync --once``), and new mail is still
    linked within seconds. Live mail (the pipeline's priority lane) is parsed first and linked after
    every parse step, whatever ``LINK_EVERY`` says."""

    def __init__(
        self, stop: threading.Event, *, sweep_seconds: float = 3.0, name: str = "pipeline", parse_first: bool = False
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.stop_event = stop
        self.wake = threading.Event()
        self.sweep_seconds = sweep_seconds
        self.parse_first = parse_first
        self._linked_at = time.monotonic()

    def step(self) -> int:
        if not self.parse_first:
            return pipeline.process_pending()
        parsed = pipeline.parse_pending()
        parsed += pipeline.link_live()
        if parsed and time.monotonic() - self._linked_at < LINK_EVERY:
            return parsed
        self._linked_at = time.monotonic()
        return parsed + pipeline.link_pending()

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
                while not self.stop_event.is_set() and self.step() > 0:
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
        # Shared by the runners: at most this many sync (and hold a database connection) at once;
        # an IDLE runner holds neither (MailboxRunner._slot).
        # Announced mail takes a free slot before the periodic polls waiting (SyncSlots).
        self.sync_slots = SyncSlots(settings.MAILROOM_SYNC_CONCURRENCY)

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
        for r in list(self.runners.values()):
            r.kick_event.set()
        if self._thread.ident is not None:  # started (tests drive reconcile() themselves)
            self._thread.join(timeout)
        # Wait for the mailbox runners and pipeline workers: nothing may touch the database after
        # stop() returns (a test's flush, a clean shutdown).
        deadline = time.monotonic() + timeout
        for t in [*self.runners.values(), *self.workers]:
            if t.ident is not None:
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
            node_remove(owner=self.owner)
        except Exception:
            log.exception("engine.lease_release_failed")

    def reconcile(self) -> None:
        """Heartbeat, renew, hand back what is above our share, claim up to it."""
        node_heartbeat(owner=self.owner)
        wanted = set(Mailbox.objects.filter(sync_enabled=True).values_list("id", flat=True))
        held = lease_renew(owner=self.owner)
        share = fair_share(len(wanted), live_nodes())
        for mid, runner in list(self.runners.items()):
            if not runner.is_alive():
                self.runners.pop(mid)
                if runner.halt_event.is_set() or mid not in wanted:
                    lease_release(owner=self.owner, mailbox_id=mid)
            elif mid not in held or mid not in wanted:
                runner.halt()  # taken over while we were paused (its commits are refused anyway), or disabled
        active = sorted(mid for mid, r in self.runners.items() if not r.halt_event.is_set())
        for mid in active[share:]:
            self.runners[mid].halt()
        handed_back = self._drain()
        self._claim((held & wanted) - handed_back, share, skip=handed_back)
        for mid in held - set(self.runners):
            lease_release(owner=self.owner, mailbox_id=mid)  # above our share, or disabled: not ours to keep

    def _drain(self) -> set[int]:
        """Wait (a bounded time) for the halted runners to stop, and release their leases only
        then: a runner still inside a commit keeps its lease until the next reconcile looks again.
        Returns the mailboxes released."""
        released: set[int] = set()
        deadline = time.monotonic() + min(DRAIN_SECONDS, lease_seconds() / 4)
        for mid, runner in list(self.runners.items()):
            if not runner.halt_event.is_set():
                continue
            runner.join(max(0.0, deadline - time.monotonic()))
            if not runner.is_alive():
                self.runners.pop(mid)
                lease_release(owner=self.owner, mailbox_id=mid)
                released.add(mid)
        return released

    def _claim(self, held: set[int], share: int, *, skip: set[int]) -> None:
        """Claim mailboxes up to our share: the ones we hold without a runner first, then free or
        expired ones by id (not those just handed back: they are another engine's to take)."""
        room = share - sum(1 for r in self.runners.values() if not r.halt_event.is_set())
        if room <= 0:
            return
        free = Mailbox.objects.filter(sync_enabled=True).filter(
            Q(lease_owner="") | Q(lease_expires_at__lt=timezone.now())
        ).exclude(pk__in=[*self.runners, *skip]).order_by("id").values_list("id", flat=True)
        candidates = [*sorted(held - set(self.runners)), *(m for m in free if m not in held)]
        for mid in candidates:
            if room <= 0:
                return
            if mid in self.runners or not lease_claim(mailbox_id=mid, owner=self.owner):
                continue
            runner = MailboxRunner(
                mid, self.stop_event, idle_seconds=self.idle_seconds, owner=self.owner, slots=self.sync_slots
            )
            self.runners[mid] = runner
            runner.start()
            room -= 1

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
