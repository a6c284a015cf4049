"""IMAP sync of one mailbox: folders by role, incremental by UID, newest-first resumable backfill,
IDLE for near-real-time INBOX, health and backoff. The only module here that talks to both the
network and the database; decisions come from :mod:`plan`."""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.db import close_old_connections, connections, transaction
from django.db.models import F
from django.utils import timezone

from mailroom.conversations.models import Source
from mailroom.ingest.imap.client import Fetched, ImapSession, ServerFolder, is_network_error
from mailroom.ingest.imap.plan import Cursor, ServerState, batches, plan_folder
from mailroom.ingest.leases import LeaseLost, idle_at_most_a_lease, lease_fence, lease_held
from mailroom.ingest.models import ImportFailure
from mailroom.ingest.rawstore import IncomingRaw, store_batch, store_prepare
from mailroom.mailboxes.connect import ImapError, imap_settings
from mailroom.mailboxes.models import Folder, Mailbox
from mailroom.parsing.headers import summarize_headers

log = logging.getLogger(__name__)

MAX_BATCH_COUNT = 500
MAX_BATCH_BYTES = 8 * 1024 * 1024  # three in memory at most (fetching, queued, storing): see bench/import_bench.py
SIZE_WINDOW = 2000  # UIDs whose sizes we ask for at once
NEW_MAIL_CHECK_SECONDS = 2.0  # during a long backfill, look for new mail this often
MAX_UID_ATTEMPTS = 3
IDLE_SLICE_SECONDS = 5.0  # IDLE is renewed this often: other folders polled, stop() noticed
# New mail fetched at most this many UIDs at once is live mail (the pipeline's priority lane: see
# conversations/pipeline.py); a larger catch-up (a mailbox back after a long pause) is a backlog.
LIVE_FETCH_MAX = 50

Progress = Callable[[Folder, int], None]  # (folder, messages stored in this step)


@dataclass
class FolderResult:
    stored: int = 0  # new sources
    new_messages: int = 0
    reset: bool = False
    failed_uids: list[int] = field(default_factory=list)


def _cursor(folder: Folder) -> Cursor:
    return Cursor(
        uidvalidity=folder.uidvalidity,
        uidnext=folder.uidnext,
        highestmodseq=folder.highestmodseq,
        synced_high_uid=folder.synced_high_uid,
        backfill_low_uid=folder.backfill_low_uid,
        backfill_done=folder.backfill_done,
    )


def folders_refresh(session: ImapSession, mailbox: Mailbox) -> list[Folder]:
    """Upsert the mailbox's folders from LIST; mark the ones whose role we sync."""
    server: list[ServerFolder] = session.folders()
    roles = set(mailbox.roles)
    existing = {f.raw_name: f for f in mailbox.folders.all()}
    seen_roles: set[str] = set()
    out: list[Folder] = []
    for sf in server:
        role = sf.role
        if role != "other" and role in seen_roles:
            role = "other"  # two folders claiming \Sent: sync the first
        seen_roles.add(role)
        selected = role in roles
        f = existing.get(sf.raw_name)
        if f is None:
            f = Folder.objects.create(mailbox=mailbox, name=sf.name, raw_name=sf.raw_name, role=role, selected=selected)
        elif f.role != role or f.selected != selected or f.name != sf.name:
            f.role, f.selected, f.name = role, selected, sf.name
            f.save(update_fields=["role", "selected", "name"])
        out.append(f)
    return out


@contextmanager
def _fenced(mailbox: Mailbox, owner: str | None) -> Iterator[None]:
    """A transaction of the import that commits only while ``owner`` still holds the mailbox's
    lease (checked last, inside it: LeaseLost rolls it back). ``owner`` None: no engine, no lease
    (``mailbox_sync_once``, the ``sync --once`` path).

    On PostgreSQL the transaction may not sit idle longer than the lease: a process paused inside it
    (SIGSTOP, a long GC) would otherwise hold its rows (the batch's new sources, the folder) locked,
    and the engine that took the mailbox over would wait on them until it woke up. The server ends
    that session instead; nothing of it is committed."""
    with transaction.atomic():
        if owner is not None:
            idle_at_most_a_lease()
        yield
        if owner is not None:
            lease_fence(mailbox_id=mailbox.pk, owner=owner)


def _folder_update(mailbox: Mailbox, folder: Folder, owner: str | None, **values: object) -> None:
    """A cursor update of ``folder``, fenced by the lease like the batches."""
    with _fenced(mailbox, owner):
        Folder.objects.filter(pk=folder.pk).update(**values)


def _store(
    mailbox: Mailbox, folder: Folder, items: list[IncomingRaw], cursor_update: dict[str, object], owner: str | None = None,
    *, live: bool = False,
) -> tuple[int, int]:
    """Store a batch and move the cursor in ONE transaction: nothing acknowledged before durable.
    What needs no write lock (appending the bytes, with their fdatasync) is done before it. With an
    ``owner`` it commits only while that engine holds the lease (LeaseLost: nothing of it stays;
    bytes already appended to a segment file are then unreferenced, as after a crash)."""
    prepared = store_prepare(team_id=mailbox.team_id, items=items)
    with _fenced(mailbox, owner):
        res = store_batch(
            team_id=mailbox.team_id,
            items=items,
            kind=Source.Kind.IMAP,
            mailbox=mailbox,
            folder=folder,
            uidvalidity=folder.uidvalidity,
            prepared=prepared,
            live=live,
        )
        Folder.objects.filter(pk=folder.pk).update(
            stored_count=F("stored_count") + res.new_sources, last_sync_at=timezone.now(), **cursor_update
        )
    for k, v in cursor_update.items():
        setattr(folder, k, v)
    folder.stored_count += res.new_sources
    return res.new_sources, res.new_messages


def _fetch_resilient(session: ImapSession, folder: Folder, uids: list[int]) -> tuple[list[Fetched], list[int]]:
    """Fetch a batch; if the server refuses it, fetch one by one and report the UIDs that fail."""
    try:
        got = session.fetch(uids)
    except ImapError:
        got, failed = [], []
        for uid in uids:
            try:
                got.extend(session.fetch([uid]))
            except ImapError as exc:
                failed.append(uid)
                _note_failure(folder, uid, exc.message)
        return got, failed
    # A UID that vanished between SEARCH and FETCH (expunged) is simply gone: not a failure.
    return got, []


def _note_failure(folder: Folder, uid: int, reason: str) -> None:
    row, _ = ImportFailure.objects.get_or_create(
        folder=folder, uidvalidity=folder.uidvalidity or 0, uid=uid, defaults={"reason": reason}
    )
    ImportFailure.objects.filter(pk=row.pk).update(
        attempts=F("attempts") + 1, reason=reason, quarantined=row.attempts + 1 >= MAX_UID_ATTEMPTS
    )


def _retry_blockers(folder: Folder) -> set[int]:
    """UIDs that failed fewer than MAX_UID_ATTEMPTS times block the cursor (we try again)."""
    return set(
        ImportFailure.objects.filter(
            folder=folder, uidvalidity=folder.uidvalidity or 0, quarantined=False
        ).values_list("uid", flat=True)
    )


class _Prefetcher:
    """Fetches the next batch from the server while the current one is being committed, so network,
    IMAP parsing and the database's fsync overlap (two batches in memory at most)."""

    _DONE = object()

    def __init__(self, session: ImapSession, folder: Folder, uids: list[int]) -> None:
        self.session, self.folder, self.uids = session, folder, uids
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=1)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="imap-prefetch", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for start in range(0, len(self.uids), SIZE_WINDOW):
                window = self.uids[start : start + SIZE_WINDOW]
                sizes = self.session.sizes(window)
                for batch in batches(window, sizes, max_count=MAX_BATCH_COUNT, max_bytes=MAX_BATCH_BYTES):
                    if self.stop.is_set():
                        return
                    fetched, failed = _fetch_resilient(self.session, self.folder, batch)
                    # Header summaries (and the content hash, which releases the GIL) are computed
                    # here, in parallel with the previous batch's database commit.
                    items = [
                        IncomingRaw(
                            raw=f.raw, uid=f.uid, internal_date=f.internal_date, summary=summarize_headers(f.raw),
                            gm_thread_id=f.gm_thread_id,
                        )
                        for f in fetched
                    ]
                    del fetched
                    self._put((batch, items, failed))
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(exc)
        finally:
            self._put(self._DONE)
            close_old_connections()

    def _put(self, item: Any) -> None:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def __iter__(self) -> Iterator[tuple[list[int], list[IncomingRaw], list[int]]]:
        while True:
            item = self.queue.get()
            if item is self._DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        """Stop and wait: the session must not be used by two threads."""
        self.stop.set()
        self.thread.join()


def _import_uids(
    session: ImapSession,
    mailbox: Mailbox,
    folder: Folder,
    uids: list[int],
    *,
    ascending: bool,
    result: FolderResult,
    progress: Progress | None,
    deadline: float | None = None,
    owner: str | None = None,
) -> bool:
    """Import ``uids`` (already ordered) in bounded batches, moving the cursor after each commit.
    Returns False when stopped early by ``deadline`` (the rest is picked up next time). New mail
    (``ascending``) of at most LIVE_FETCH_MAX UIDs, in a folder synced before (not its first look, as
    an oldest-first mailbox's first import), is stored as live mail."""
    if not uids:
        return True
    live = ascending and len(uids) <= LIVE_FETCH_MAX and folder.uidnext is not None
    prefetch = _Prefetcher(session, folder, uids)
    try:
        for batch, fetched, failed in prefetch:  # fetched: IncomingRaw with summaries
            blockers = _retry_blockers(folder) & set(failed)
            if ascending:
                # The cursor may pass a failed UID only once it is quarantined.
                stop_at = min(blockers) if blockers else None
                ok = [f for f in fetched if stop_at is None or (f.uid or 0) < stop_at]
                high = max(folder.synced_high_uid, stop_at - 1) if stop_at is not None else max(batch)
                new_src, new_msgs = _store(mailbox, folder, ok, {"synced_high_uid": high}, owner, live=live)
            else:
                stop_at = max(blockers) if blockers else None
                ok = [f for f in fetched if stop_at is None or (f.uid or 0) > stop_at]
                low = (stop_at + 1) if stop_at is not None else min(batch)
                new_src, new_msgs = _store(mailbox, folder, ok, {"backfill_low_uid": low}, owner)
            del fetched, ok
            result.stored += new_src
            result.new_messages += new_msgs
            result.failed_uids.extend(failed)
            if progress is not None:
                progress(folder, new_src)
            if blockers:
                return False
            if deadline is not None and time.monotonic() > deadline:
                return False
    finally:
        prefetch.close()
    return True


def sync_folder(
    session: ImapSession,
    mailbox: Mailbox,
    folder: Folder,
    *,
    progress: Progress | None = None,
    backfill_seconds: float | None = None,
    owner: str | None = None,
) -> FolderResult:
    """Bring one folder up to date. With ``backfill_seconds`` the backfill runs at most that long
    (new mail is always taken first), so a caller can interleave IDLE and other folders. With an
    ``owner`` (an engine's runner) every write of the folder's cursor is fenced by its lease."""
    result = FolderResult()
    status = session.examine(folder.name)
    server = ServerState(status.uidvalidity, status.uidnext, status.exists, status.highestmodseq)
    plan = plan_folder(_cursor(folder), server, newest_first=mailbox.newest_first)
    if plan.reset:
        result.reset = folder.uidvalidity is not None
        if result.reset:
            log.warning("ingest.uidvalidity_changed", extra={"folder": folder.pk, "new": status.uidvalidity})
        _folder_update(
            mailbox, folder, owner, uidvalidity=status.uidvalidity, uidnext=None, highestmodseq=None,
            synced_high_uid=0, backfill_low_uid=None, backfill_done=False, stored_count=0,
        )
        folder.refresh_from_db()
    _folder_update(mailbox, folder, owner, server_count=status.exists)
    folder.server_count = status.exists

    if plan.start_backfill:
        # Pin the top: everything above it is "new mail"; everything below is backfilled downwards.
        top_uids = session.uids_above(0)
        top = top_uids[-1] if top_uids else 0
        _folder_update(mailbox, folder, owner, synced_high_uid=top, backfill_low_uid=top + 1)
        folder.synced_high_uid, folder.backfill_low_uid = top, top + 1
    elif plan.check_new:
        new = session.uids_above(folder.synced_high_uid)
        _import_uids(session, mailbox, folder, new, ascending=True, result=result, progress=progress, owner=owner)

    if not plan.backfill and not folder.backfill_done:
        # Oldest-first or empty at the first look: there is nothing below to backfill.
        _folder_update(mailbox, folder, owner, backfill_done=True)
        folder.backfill_done = True
    if plan.backfill and not folder.backfill_done:
        deadline = time.monotonic() + backfill_seconds if backfill_seconds else None
        while True:
            low = folder.backfill_low_uid if folder.backfill_low_uid is not None else folder.synced_high_uid + 1
            older = session.uids_below(low, SIZE_WINDOW)
            if not older:
                _folder_update(mailbox, folder, owner, backfill_done=True)
                folder.backfill_done = True
                break
            step_deadline = time.monotonic() + NEW_MAIL_CHECK_SECONDS
            if deadline is not None:
                step_deadline = min(step_deadline, deadline)
            done = _import_uids(
                session, mailbox, folder, older, ascending=False, result=result, progress=progress,
                deadline=step_deadline, owner=owner,
            )
            # New mail first, even in the middle of a long backfill.
            new = session.uids_above(folder.synced_high_uid)
            if new:
                _import_uids(
                    session, mailbox, folder, new, ascending=True, result=result, progress=progress, owner=owner
                )
            if deadline is not None and time.monotonic() > deadline:
                break
            if not done and _retry_blockers(folder):
                break
    # The cursor knows the server state only once everything up to it is stored.
    _folder_update(
        mailbox, folder, owner, uidnext=status.uidnext, highestmodseq=status.highestmodseq, last_sync_at=timezone.now()
    )
    folder.uidnext, folder.highestmodseq = status.uidnext, status.highestmodseq
    return result


# --- health ----------------------------------------------------------------------------------------
def health_ok(mailbox: Mailbox) -> None:
    Mailbox.objects.filter(pk=mailbox.pk).update(
        health=Mailbox.Health.OK, last_error="", consecutive_failures=0, next_attempt_at=None,
        last_sync_at=timezone.now(),
    )


def health_syncing(mailbox: Mailbox) -> None:
    Mailbox.objects.filter(pk=mailbox.pk).update(health=Mailbox.Health.SYNCING)


def health_failed(mailbox: Mailbox, exc: BaseException) -> float:
    """Record the failure and return the backoff delay (exponential, with jitter)."""
    mailbox.refresh_from_db(fields=["consecutive_failures"])
    failures = mailbox.consecutive_failures + 1
    kind = getattr(exc, "kind", "error")
    message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
    base = 300.0 if kind == "auth" else 2.0
    delay = min(900.0, base * (2 ** min(failures - 1, 8))) * random.uniform(0.5, 1.5)
    Mailbox.objects.filter(pk=mailbox.pk).update(
        health=Mailbox.Health.AUTH_FAILED if kind in ("auth", "oauth") else Mailbox.Health.ERROR,
        last_error=message[:2000],
        last_error_at=timezone.now(),
        consecutive_failures=failures,
        next_attempt_at=timezone.now() + timedelta(seconds=delay),
    )
    log.warning("ingest.mailbox_failed", extra={"mailbox": mailbox.pk, "kind": kind, "delay": round(delay, 1)})
    return delay


def open_session(mailbox: Mailbox) -> ImapSession:
    return ImapSession.open(imap_settings(mailbox))


def mailbox_sync_once(
    mailbox: Mailbox, *, session: ImapSession | None = None, progress: Progress | None = None
) -> dict[str, FolderResult]:
    """Sync every selected folder of the mailbox to completion (the `mailroom sync --once` path).

    It takes no lease: an operator's one-off run, which must work while an engine is down and must
    not be refused for a minute after a killed run (whose lease would outlive it). Beside an engine
    syncing the same mailbox nothing doubles (the raw store is idempotent on the source's
    (folder, UIDVALIDITY, UID) and the message's identity); only the cursors of the two may race
    forward, which the next pass repairs (everything above ``synced_high_uid`` is looked at again)."""
    own = session is None
    health_syncing(mailbox)
    try:
        session = session or open_session(mailbox)
        results: dict[str, FolderResult] = {}
        for folder in folders_refresh(session, mailbox):
            if folder.selected:
                results[folder.name] = sync_folder(session, mailbox, folder, progress=progress)
        health_ok(mailbox)
        return results
    except Exception as exc:
        health_failed(mailbox, exc)
        raise
    finally:
        if own and session is not None:
            session.close()


def release_database() -> None:
    """Close this thread's database connections before a wait (IDLE, a poll interval, a backoff): a
    runner is a thread per mailbox that waits most of its life, and one connection held by each made
    N mailboxes need N PostgreSQL connections at rest (200 IDLE mailboxes on two workers ran the
    server out of its default 100: bench/scaleout_bench.py). The next sync step connects again."""
    connections.close_all()


class SyncSlots:
    """An engine's sync slots: at most ``n`` of its runners sync (and hold a database connection)
    at once. A runner woken by mail the server announced (IDLE) goes before the ones waiting to
    poll: 200 runners that entered IDLE together polled together ``idle_seconds`` later, and new
    mail waited seconds behind their polls for a slot (bench/scaleout_bench.py, part 2)."""

    def __init__(self, n: int) -> None:
        self._free = n
        self._urgent = 0  # urgent runners waiting
        self._cond = threading.Condition()

    def acquire(self, urgent: bool = False) -> None:
        with self._cond:
            if urgent:
                self._urgent += 1
            try:
                while self._free <= 0 or (not urgent and self._urgent > 0):
                    self._cond.wait()
                self._free -= 1
            finally:
                if urgent:
                    self._urgent -= 1
                    self._cond.notify_all()  # the others may go now, if a slot is free

    def release(self) -> None:
        with self._cond:
            self._free += 1
            self._cond.notify_all()


@dataclass
class _Rest:
    urgent: bool = False  # the wait ended in announced mail: its slot is taken first


class MailboxRunner(threading.Thread):
    """Keeps one mailbox in sync: sync, then IDLE on INBOX (poll other folders between IDLEs).

    ``owner``: the engine whose lease this runner syncs under; every commit is fenced by it, and a
    lost lease ends the runner (None: unfenced, for tests of the runner alone). ``stop`` is the
    engine's (all runners); :meth:`halt` stops this one alone (the engine hands the mailbox to
    another engine)."""

    def __init__(
        self, mailbox_id: int, stop: threading.Event, *, idle_seconds: float = 25.0, owner: str | None = None,
        slots: threading.Semaphore | SyncSlots | None = None,
    ) -> None:
        super().__init__(name=f"mailbox-{mailbox_id}", daemon=True)
        self.mailbox_id = mailbox_id
        self.stop_event = stop
        self.halt_event = threading.Event()
        self.kick_event = threading.Event()
        self.idle_seconds = idle_seconds
        self.owner = owner
        self.lease_lost = False
        # The engine's sync slots, shared by its runners: one is held while syncing (and so using
        # the database), none while waiting; None: unbounded (a runner alone, in tests).
        self.slots = slots

    @property
    def stopping(self) -> bool:
        return self.stop_event.is_set() or self.halt_event.is_set()

    @contextmanager
    def _slot(self) -> Iterator[None]:
        """A sync slot for the block: at most MAILROOM_SYNC_CONCURRENCY runners of an engine sync
        (and hold a database connection) at once, however many mailboxes it holds. Every runner
        starts with a sync: 100 of them at once ran PostgreSQL out of connections."""
        if self.slots is not None:
            self.slots.acquire()
        try:
            yield
        finally:
            release_database()
            if self.slots is not None:
                self.slots.release()

    @contextmanager
    def _resting(self) -> Iterator[_Rest]:
        """Inside :meth:`_slot`, around a wait (IDLE, a poll interval, a backoff): the slot and the
        database connection are given back meanwhile, the slot taken again after (before the
        runners waiting to poll, if the body says the wait ended in announced mail)."""
        release_database()
        if self.slots is not None:
            self.slots.release()
        rest = _Rest()
        try:
            yield rest
        finally:
            if isinstance(self.slots, SyncSlots):
                self.slots.acquire(urgent=rest.urgent)
            elif self.slots is not None:
                self.slots.acquire()

    def _idle(self, session: ImapSession) -> bool:
        """IDLE on the selected INBOX for up to ``idle_seconds``, renewed every IDLE_SLICE_SECONDS
        (a stop or a kick is noticed within one slice); whether the server announced a change. The
        other folders are polled once it ends, every ``idle_seconds``, not after every slice: with
        200 mailboxes a full pass every 5 s each was 40 syncs a second with no mail at all, and new
        mail queued behind them for a sync slot (bench/scaleout_bench.py). The time is drawn from the
        last quarter below ``idle_seconds``, so that runners that entered IDLE together do not all
        poll together."""
        deadline = time.monotonic() + self.idle_seconds * random.uniform(0.75, 1.0)
        while not self.stopping and not self.kick_event.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if session.idle_wait(timeout=min(left, IDLE_SLICE_SECONDS)):
                return True
        return False

    def halt(self) -> None:
        """Ask this runner to stop (at its next step: within an IDLE slice or a backfill step)."""
        self.halt_event.set()
        self.kick_event.set()

    def run(self) -> None:
        try:
            self._run()
        except LeaseLost as exc:
            # Another engine syncs this mailbox now (we were paused past the lease): nothing of the
            # refused commit stayed, and its health is the new owner's to say.
            self.lease_lost = True
            log.warning("ingest.lease_lost", extra={"mailbox": self.mailbox_id, "owner": exc.owner})
        finally:
            connections.close_all()  # this thread's connections: nothing left open after stop()

    def _run(self) -> None:
        while not self.stopping:
            with self._slot():
                if not self._step():
                    return

    def _step(self) -> bool:
        """One session (after the backoff, if any); False: this runner is done."""
        close_old_connections()
        try:
            mailbox = Mailbox.objects.get(pk=self.mailbox_id)
        except Mailbox.DoesNotExist:
            return False
        if not mailbox.sync_enabled:
            return False
        wait = 0.0
        if mailbox.next_attempt_at and mailbox.next_attempt_at > timezone.now():
            wait = (mailbox.next_attempt_at - timezone.now()).total_seconds()
        if wait > 0:
            with self._resting():
                self.kick_event.wait(wait)
            self.kick_event.clear()
            if self.stopping:
                return False
        try:
            self._session_loop(mailbox)
        except LeaseLost:
            raise
        except Exception as exc:
            # Paused inside a commit past the lease, the server ended our session: the lease is
            # then another engine's, and so is the mailbox's health.
            close_old_connections()
            if self.owner is not None and not lease_held(mailbox_id=self.mailbox_id, owner=self.owner):
                raise LeaseLost(self.mailbox_id, self.owner) from exc
            if not isinstance(exc, ImapError) and not is_network_error(exc):
                log.exception("ingest.unexpected_error", extra={"mailbox": self.mailbox_id})
            health_failed(mailbox, exc)
        finally:
            close_old_connections()
        return True

    def _session_loop(self, mailbox: Mailbox) -> None:
        session = open_session(mailbox)
        try:
            folders = folders_refresh(session, mailbox)
            # INBOX last, so that it is the selected folder when IDLE starts.
            selected = sorted((f for f in folders if f.selected), key=lambda f: f.role == Folder.Role.INBOX)
            inbox = next((f for f in selected if f.role == Folder.Role.INBOX), None)
            health_syncing(mailbox)
            while not self.stopping:
                pending_backfill = False
                for folder in selected:
                    if self.stopping:
                        return
                    sync_folder(session, mailbox, folder, backfill_seconds=5.0, owner=self.owner)
                    pending_backfill |= not folder.backfill_done
                if pending_backfill:
                    continue  # keep importing; new mail is taken between backfill steps
                health_ok(mailbox)
                self.kick_event.clear()
                if inbox is None:
                    with self._resting():
                        self.kick_event.wait(self.idle_seconds)
                    continue
                # IDLE on INBOX; other folders are polled when IDLE ends (change or timeout).
                # INBOX was synced last and is still selected: anything that arrived after that
                # EXAMINE is announced during IDLE (a fresh EXAMINE here would swallow it).
                if session.selected != inbox.name:
                    session.examine(inbox.name)
                    sync_folder(session, mailbox, inbox, owner=self.owner)
                with self._resting() as rest:
                    changed = rest.urgent = self._idle(session)
                if changed:
                    sync_folder(session, mailbox, inbox, owner=self.owner)
        finally:
            session.close()
