"""The processing pipeline over the raw store: parse, then route and link.

The database is the source of truth: a message's ``state`` says which stage it needs. Workers
(in-process threads on the embedded default, Celery tasks when ``MAILROOM_TASKS=celery``) claim
batches of messages by state; a queue only wakes them, and the sweeper (``process_pending`` on a
timer) re-drives anything left behind. Every stage is idempotent, so running a message twice is
harmless. A message that keeps failing is quarantined with its reason after ``MAX_ATTEMPTS``.

**The priority lane.** Live mail (``Message.live``: stored by a small fetch of new mail after IDLE or
a poll, by the relay endpoint or our outbox; not by a backlog import) is parsed before anything
else, in a batch of its own, and linked before the backlog where that cannot change how anything is
threaded (``_live_linkable``); otherwise it waits for its turn in the ordinary order (stored: by
id; parsed: by date, oldest first, so that parents come before replies).
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import threading
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connection, transaction
from django.db.models import F
from django.utils import timezone

from mailroom.conversations.models import Message

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
BATCH = 400
# Linking a batch has a fixed cost (its evidence and threads are loaded in a few queries, one commit):
# linking 20,000 parsed messages took 10-20% less CPU in batches of 1,000 than of 400. Its rows are
# small (no bodies), so the larger batch costs little memory.
LINK_BATCH = 1000
PARSE_BATCH_BYTES = 12 * 1024 * 1024  # per pipeline thread: bounds the parse results held at once
# Live messages parsed, or looked at for linking, at once in the priority lane.
LIVE_BATCH = 50

_wake_callbacks: list[Callable[[], None]] = []
_wake_lock = threading.Lock()


def on_wake(callback: Callable[[], None]) -> None:
    """Register a callback run whenever new messages are committed (worker wake-up)."""
    with _wake_lock:
        _wake_callbacks.append(callback)


def remove_wake_callback(callback: Callable[[], None]) -> None:
    with _wake_lock:
        if callback in _wake_callbacks:
            _wake_callbacks.remove(callback)


def clear_wake_callbacks() -> None:
    with _wake_lock:
        _wake_callbacks.clear()


def wake_pipeline() -> None:
    with _wake_lock:
        callbacks = list(_wake_callbacks)
    for cb in callbacks:
        try:
            cb()
        except Exception:  # a broken waker must never fail a commit hook
            log.exception("pipeline.wake_failed")


def _fail(pk: int, exc: BaseException) -> None:
    from mailroom.parsing.workers import ParseFailed

    reason = str(exc) if isinstance(exc, ParseFailed) else f"{type(exc).__name__}: {exc}"
    trace = exc.trace if isinstance(exc, ParseFailed) else "".join(traceback.format_exception(exc))
    log.warning("pipeline.failed", extra={"message_pk": pk, "reason": reason})
    Message.objects.filter(pk=pk).update(attempts=F("attempts") + 1, last_error=reason[:2000])
    Message.objects.filter(pk=pk, attempts__gte=MAX_ATTEMPTS).exclude(state=Message.State.QUARANTINED).update(
        state=Message.State.QUARANTINED,
        quarantined_at=timezone.now(),
        last_error=(reason + "\n" + trace[-3000:]),
    )


_local_locks = {"parse": threading.Lock(), "link": threading.Lock()}


@contextmanager
def _claim(stage: str) -> Iterator[bool]:
    """Several workers (threads, processes, machines) may run the pipeline at once.

    PostgreSQL: parsing claims its rows with ``SELECT ... FOR UPDATE SKIP LOCKED`` (the caller's
    transaction), so parse workers share the work; linking runs under a transaction-level advisory
    lock, so that parents and replies are threaded in order. SQLite has one writer anyway: a
    process-local lock keeps this process's workers from doing the same batch twice (parsing holds it
    only while it picks its batch: see ``_in_flight``)."""
    if connection.vendor == "postgresql":
        with transaction.atomic():
            if stage == "link":
                with connection.cursor() as cur:
                    cur.execute("SELECT pg_advisory_xact_lock(%s)", [_LINK_LOCK_KEY])
            yield True
    elif stage == "parse":
        yield False
    else:
        with _local_locks[stage]:
            yield False


# SQLite: ids of the messages this process's threads are parsing. A thread picks its batch under the
# local lock and leaves out these, so two threads parse (and keep the parse workers busy) at once.
_in_flight: set[int] = set()


_LINK_LOCK_KEY = 0x6D61696C726F6F6D  # "mailroom"


def parse_pending(limit: int = BATCH) -> int:
    """Parse up to ``limit`` stored messages, storing the results in one transaction.
    Returns how many were handled (parsed or failed)."""
    with _claim("parse") as row_locks:
        return _parse_pending(limit, row_locks)


def _parse_pending(limit: int, row_locks: bool) -> int:
    # What parsing and storing the result read (the rest, JSON columns above all, costs decoding): the
    # fields the result replaces are set on the instance, "date" only when the message has a Date.
    stored = Message.objects.filter(state=Message.State.STORED).only(
        "id", "size", "received_at", "content_hash", "routing_headers", "state", "date", "direction"
    )
    # Live mail first, in a batch of its own, not behind a backlog's batch: the lane's partial
    # index holds only live rows waiting.
    live = stored.filter(live=True).order_by("id")
    backlog = stored.order_by("id")
    if row_locks:
        messages = list(live.select_for_update(skip_locked=True, of=("self",))[: min(limit, LIVE_BATCH)])
        if not messages:
            messages = list(backlog.select_for_update(skip_locked=True, of=("self",))[:limit])
        return _parse_batch(messages)
    with _local_locks["parse"]:
        busy = list(_in_flight)
        messages = list(live.exclude(pk__in=busy)[: min(limit, LIVE_BATCH)])
        if not messages:
            messages = list(backlog.exclude(pk__in=busy)[:limit])
        claimed = [m.pk for m in messages]
        _in_flight.update(claimed)
    try:
        return _parse_batch(messages)
    finally:
        with _local_locks["parse"]:
            _in_flight.difference_update(claimed)


def _parse_batch(messages: list[Message]) -> int:
    from mailroom.conversations.models import raw_refs_for
    from mailroom.conversations.services import messages_store_parsed, parse_jobs

    if not messages:
        return 0
    # Bound memory by bytes too: a batch of large messages is cut short.
    total, keep = 0, 0
    for keep, message in enumerate(messages, 1):  # noqa: B007
        total += message.size
        if total > PARSE_BATCH_BYTES:
            break
    messages = messages[:keep]
    raws = raw_refs_for([m.pk for m in messages])
    readable: list[tuple[Message, bytes | str]] = []
    for message in messages:
        raw = raws.get(message.pk)
        if raw is None:
            _fail(message.pk, LookupError(f"message {message.pk} has no raw bytes"))
        else:  # bytes, or where they are: whoever parses the message reads them (a lost segment fails it)
            readable.append((message, raw))
    del raws
    done = []
    for (message, _), parsed in zip(readable, parse_jobs(readable), strict=True):
        if isinstance(parsed, Exception):
            _fail(message.pk, parsed)
        else:
            done.append((message, parsed))
    try:
        messages_store_parsed(items=done)
    except Exception:
        for message, parsed in done:  # find the one that breaks the batch
            try:
                messages_store_parsed(items=[(message, parsed)])
            except Exception as exc:
                _fail(message.pk, exc)
    bounces = [m.pk for m, p in done if p.bounce.is_bounce and m.state == Message.State.PARSED]
    if bounces:
        _record_bounces(bounces)
    return len(messages)


def _record_bounces(message_pks: list[int]) -> None:
    """Mark the outbox recipients a bounce reports (the outbox worker's sweep catches up if this fails)."""
    from mailroom.outbound.bounces import outbox_bounces_record

    try:
        with transaction.atomic():
            outbox_bounces_record(message_pks=message_pks)
    except Exception:
        log.exception("pipeline.bounces_failed")


def link_pending(limit: int = LINK_BATCH) -> int:
    """Thread and link up to ``limit`` parsed messages, oldest first (so parents come before replies);
    the priority lane's first (``link_live``), if any may go."""
    from mailroom.conversations.linking import messages_link

    live = _live_waiting()
    with _claim("link"):
        if live:
            pks = _live_linkable()
            if pks:
                return _link_pks(pks, messages_link)
        return _link_pending(limit, messages_link)


def link_live() -> int:
    """Link the live messages that may go before the backlog (``_live_linkable``); 0 at once if no
    live message waits (no lock taken). Run after every parse step (``PipelineWorker``,
    ``background_step``): live mail is linked as soon as it is parsed, not when the backlog's turn
    to be linked comes."""
    from mailroom.conversations.linking import messages_link

    if not _live_waiting():
        return 0
    with _claim("link"):
        pks = _live_linkable()
        return _link_pks(pks, messages_link) if pks else 0


def _live_waiting() -> bool:
    return Message.objects.filter(state=Message.State.PARSED, live=True).exists()


def _live_linkable(limit: int = LIVE_BATCH) -> list[int]:
    """The parsed live messages (oldest first, at most ``limit`` looked at) whose threading cannot
    depend on any message still waiting to be parsed or linked (*pending*: stored or parsed) of
    their team, so that linking them before those gives what the oldest-first order would.

    The resolver (routing/resolver.py) decides from messages already linked. A pending message P
    could have mattered to a live message L only through (each case and what rules it out):

    * a Message-ID: L references P (P is L's parent), or P is another copy of L (same Message-ID):
      every id L references must be a **linked** message of the team (none absent, none pending),
      and no other message with L's own Message-ID may be pending. Then L's header evidence is all
      linked; ``shared_reference`` (siblings of an unstored parent) cannot fire for it;
    * a subject (``subject_fallback``: a reply-looking message without header evidence joins a
      thread of the same normalised subject and a participant in common, dated within a window of
      the thread's last message). L takes part only if it is not reply-looking or has header
      evidence (a reply-looking L without references is not taken). P could be matched to the
      thread L starts or joins, whose last date L moves forward: no pending message of the team
      dated up to L may have L's normalised subject or that of a thread L's references are in
      (``Message.subject_key``, written when stored);
    * a conversation key (Gmail's X-GM-THRID, Outlook's Thread-Index): no pending message of the
      team may carry L's X-GM-THRID; an L with a Thread-Index (known only once parsed, so not of the
      pending stored messages) is taken only when nothing of its team older than it is pending;
    * the thread's participants (``sender_check``: an unauthenticated sender answering our signed
      Message-ID is accepted only as a participant of that thread, which P could have made him):
      an unauthenticated L referencing one of our Message-IDs is taken only if its sender is a
      participant of that thread already (P can add participants, never take one away).

    A pending P that references L (L is P's parent although P's Date is older) is linked after L:
    parent first, the order the resolver is written for (oldest-first relies on the Date, which the
    sender writes). The rest is commutative: a thread's participants and dates are a union, a min
    and a max. Live messages that may not go stay in the ordinary order."""
    from mailroom.conversations.models import Thread, ThreadAlias, subject_key
    from mailroom.core.tokens import parse_own_message_id
    from mailroom.routing.addresses import canonical_address
    from mailroom.routing.rules import AuthVerdict
    from mailroom.routing.subjects import is_reply

    pending_states = (Message.State.STORED, Message.State.PARSED)
    rows: list[dict[str, Any]] = [
        dict(r) for r in Message.objects.filter(state=Message.State.PARSED, live=True)
        .order_by("date", "id")
        .values("id", "team_id", "message_id", "message_id_hash", "in_reply_to", "references", "subject",
                "from_address", "date", "received_at", "auth", "routing_headers", "direction")[:limit]
    ]
    if not rows:
        return []

    def refs(r: dict[str, Any]) -> list[str]:
        return [*(r["in_reply_to"] or ()), *(r["references"] or ())]

    def message_id_hash(message_id: str) -> str:  # as the raw store computes it
        return hashlib.sha256(message_id.encode("utf-8", "surrogateescape")).hexdigest()

    # The states of every message with an id these reference or carry: one query by (team, hash).
    wanted: dict[int, set[str]] = {}
    for r in rows:
        wanted.setdefault(r["team_id"], set()).update([r["message_id_hash"], *(message_id_hash(m) for m in refs(r))])
    states: dict[tuple[int, str], list[tuple[int, str, int | None]]] = {}
    for team_id, hashes in wanted.items():
        for pk, h, state, thread in Message.objects.filter(
            team_id=team_id, message_id_hash__in=list(hashes)
        ).values_list("id", "message_id_hash", "state", "thread_id"):
            states.setdefault((team_id, h), []).append((pk, state, thread))

    taken: list[int] = []
    for r in rows:
        team_id, pk = r["team_id"], r["id"]
        date = r["date"] or r["received_at"]
        referenced = refs(r)
        if not all(
            (found := states.get((team_id, message_id_hash(mid))))
            and all(state == Message.State.LINKED for _, state, _ in found)
            for mid in referenced
        ):
            continue  # a parent pending or not stored: the ordinary order
        if any(o != pk and state in pending_states for o, state, _ in states.get((team_id, r["message_id_hash"]), ())):
            continue  # another copy of it pending
        if not referenced and is_reply(r["subject"] or ""):
            continue  # may be threaded by its subject
        others = Message.objects.filter(team_id=team_id, state__in=pending_states).exclude(pk__in=[*taken, pk])
        parents = {t for mid in referenced for _, _, t in states[(team_id, message_id_hash(mid))] if t is not None}
        keys = {subject_key(r["subject"] or "")} | {
            subject_key(n) for n in Thread.objects.filter(pk__in=parents).values_list("normalized_subject", flat=True)
        }
        keys.discard("")
        if keys and others.filter(subject_key__in=sorted(keys), date__lte=date).exists():
            continue  # a pending message of that subject
        headers = r["routing_headers"] or {}
        if headers.get("thread_index") and others.filter(date__lte=date).exists():
            continue
        gm = headers.get("gm_thread_id")
        if gm and others.filter(routing_headers__gm_thread_id=gm).exists():
            continue
        if r["direction"] != Message.Direction.OUTGOING and not AuthVerdict.from_json(r["auth"]).authenticates(
            r["from_address"] or ""
        )[0]:
            tokens = [t for t in (parse_own_message_id(m) for m in referenced if m[:3].lower() == "mr.") if t]
            threads = {t.thread_id for t in tokens if t.thread_id is not None}
            if threads:
                for _ in range(100):  # merged threads: their survivors
                    moved = dict(ThreadAlias.objects.filter(absorbed_id__in=threads).values_list("absorbed_id", "survivor_id"))
                    if not moved:
                        break
                    threads = {moved.get(t, t) for t in threads}
                sender = canonical_address(r["from_address"] or "")
                people = Thread.objects.filter(team_id=team_id, pk__in=threads).values_list("participants", flat=True)
                if not sender or any(sender not in set(p or ()) for p in people):
                    continue
        taken.append(pk)
    return taken


def _link_pending(limit: int, messages_link: Callable[..., None]) -> int:
    pks = list(
        Message.objects.filter(state=Message.State.PARSED).order_by("date", "id").values_list("id", flat=True)[:limit]
    )
    return _link_pks(pks, messages_link)


def _link_pks(pks: list[int], messages_link: Callable[..., None]) -> int:
    if not pks:
        return 0
    try:
        with transaction.atomic():  # a savepoint: a failure leaves the outer transaction usable
            messages_link(message_pks=pks)
    except Exception:
        # One bad message must not block the batch: retry one by one to find it.
        for pk in pks:
            try:
                with transaction.atomic():
                    messages_link(message_pks=[pk])
            except Exception as exc:
                _fail(pk, exc)
    return len(pks)


def process_pending(*, link: bool = True) -> int:
    """One sweep: parse a batch, then link (unless ``link`` is false: another process links).
    Returns the number of messages handled."""
    return parse_pending() + (link_pending() if link else 0)


def drain(max_rounds: int = 1_000_000, *, link: bool = True) -> int:
    """Process until nothing is pending (`mailroom sync --once`, tests). Two threads take turns at
    the stages, so that one links a batch while the other has the next one parsed (in the parse
    worker processes); inside a transaction (tests) one thread does it all, as other connections
    could not see the caller's uncommitted rows. With ``link`` false it only parses (another
    process links: see ``_in_process_beside``)."""
    if connection.in_atomic_block:
        return _drain_loop(max_rounds, link)
    with ThreadPoolExecutor(1, thread_name_prefix="pipeline-drain") as helper:
        other = helper.submit(_drain_thread, max_rounds, link)
        total = _drain_loop(max_rounds, link)
        return total + other.result()


@contextmanager
def in_background(threads: int = 1) -> Iterator[list[int]]:
    """Run the pipeline while the body runs (``mailroom sync --once``: the import), woken by each
    commit of new mail, so that parsing and threading keep pace with the import instead of starting
    after it; ``drain()`` afterwards finishes what is left. Yields a list that receives the number of
    steps handled. Inside a transaction (tests) it does nothing: other connections could not see the
    caller's uncommitted rows.

    Where parse workers are configured (more than one core), the pipeline runs in a process of its
    own, with its own parse workers (``_in_process_beside``), and everything pending is parsed and
    linked before the body's exit returns; the list then receives the child's count and this
    process's. In this process the pipeline competed with the import for one interpreter lock:
    measured on bench/import_bench.py (20,000 messages, 2 cores, two pairs of runs back to back),
    the import ran at 1,076 and 1,275 msgs/s beside a pipeline process against 818 and 958 beside a
    pipeline thread, and everything was parsed and linked at 481 and 558 against 409 and 479 msgs/s.
    Otherwise ``threads`` threads of this process do it (one by default: a second one slowed the
    import more than it helped)."""
    from django.conf import settings

    handled: list[int] = []
    if connection.in_atomic_block:
        yield handled
        return
    if settings.MAILROOM_PARSE_PROCESSES > 0 and not multiprocessing.current_process().daemon:
        with _in_process_beside(handled):
            yield handled
        return
    with _in_threads(threads, handled):
        yield handled


@contextmanager
def _in_threads(threads: int, handled: list[int]) -> Iterator[None]:
    stop, wake = threading.Event(), threading.Event()

    def loop() -> None:
        n = 0
        try:
            while not stop.is_set():
                n += background_step(wake)
        finally:
            handled.append(n)
            connection.close()  # this thread's own connection

    on_wake(wake.set)
    workers = [threading.Thread(target=loop, name=f"pipeline-bg-{i}", daemon=True) for i in range(threads)]
    for t in workers:
        t.start()
    try:
        yield
    finally:
        stop.set()
        wake.set()
        for t in workers:
            t.join()
        remove_wake_callback(wake.set)


def background_step(wake: Any, *, parse_first: bool = False) -> int:
    """One background sweep; waits for a wake-up (at most half a second) when there was nothing.
    With ``parse_first`` it links only when there was nothing to parse (see ``_in_process_beside``),
    but for the priority lane's live messages, linked after every parse step."""
    try:
        if parse_first:
            done = parse_pending()
            done += link_live()  # live mail is linked as soon as it is parsed
            if not done:
                done = link_pending()
        else:
            done = process_pending()
    except Exception:  # logged; the sweep (drain) picks the rest up
        log.exception("pipeline.background_failed")
        done = 0
    if not done:
        wake.wait(0.5)
        wake.clear()
    return done


@contextmanager
def _in_process_beside(handled: list[int]) -> Iterator[None]:
    """The pipeline in a child process (``conversations/background.py``) while the body runs.

    While the body runs, the child parses and links only when parsing has caught up: a linking
    batch holds the database's write lock for a while, and the import waited for it
    (bench/import_bench.py, 20,000 messages, two runs each, alternating: with the child linking
    nothing during the import, which is what this comes to on a fast one, the import ran at 1,380
    and 1,427 msgs/s against 1,301 and 1,032 when it linked all along, and everything was parsed and
    linked at 692 and 696 against 719 and 640 msgs/s). Once the body is over the child parses what
    is left and this process, its import done, links (``_link_beside``). Before, the child did both
    while this process waited: after the import its core was idle a fifth of the time, the child
    being at 90% of a core and its parse worker waiting for it (per-second samples)."""
    ctx = multiprocessing.get_context("spawn")  # never fork a process with threads and connections
    stop, wake, handed = ctx.Event(), ctx.Event(), ctx.Event()
    results = ctx.SimpleQueue()
    overrides = child_settings()
    # Not daemonic: it starts parse workers of its own. It stops by itself if this process dies.
    from mailroom.conversations.background import pipeline_process

    child = ctx.Process(
        target=pipeline_process, args=(overrides, stop, wake, handed, results, os.getpid()),
        name="mailroom-pipeline",
    )
    child.start()
    on_wake(wake.set)
    linked = 0
    try:
        yield
    finally:
        stop.set()
        wake.set()
        remove_wake_callback(wake.set)
        # The import is over and this process's core is free: the child parses what is left and
        # this process links it, once the child has said it links no more (never both at once).
        if _wait_for(handed, child):
            linked = _link_beside(child)
        child.join()  # after it has parsed what is pending
        handled.extend((0 if results.empty() else results.get(), linked))
        if child.exitcode:
            log.warning("pipeline.process_failed", extra={"exitcode": child.exitcode})


def child_settings() -> dict[str, Any]:
    """What a spawned pipeline process sets before ``django.setup()``: this process's configuration,
    as changed at run time too (a test database)."""
    from django.conf import settings

    overrides = {name: getattr(settings, name) for name in dir(settings) if name.startswith("MAILROOM_")}
    overrides["DATABASES"] = {**settings.DATABASES, DEFAULT_DB_ALIAS: dict(connection.settings_dict)}
    return overrides


def _wait_for(event: Any, child: Any) -> bool:
    """Wait for ``event`` while ``child`` (a process) runs; whether it was set."""
    while not event.wait(0.2):
        if not child.is_alive():
            return event.is_set()
    return True


def _link_beside(child: Any) -> int:
    """Link parsed messages while ``child`` parses the rest, then what it left parsed. Returns how
    many were linked; an error stops it (logged: the caller's ``drain`` finishes the work)."""
    linked = 0
    try:
        while True:
            running = child.is_alive()
            n = link_pending()
            linked += n
            if not n:
                if not running:
                    return linked
                child.join(0.05)  # wait for the next parsed batch, or for the child's end
    except Exception:
        log.exception("pipeline.link_beside_failed")
        return linked


def _drain_loop(max_rounds: int, link: bool = True) -> int:
    total = 0
    for _ in range(max_rounds):
        n = process_pending(link=link)
        total += n
        if n == 0:
            break
    return total


def _drain_thread(max_rounds: int, link: bool = True) -> int:
    try:
        return _drain_loop(max_rounds, link)
    finally:
        connection.close()  # this thread's own connection


def quarantine_replay(*, message_pk: int) -> None:
    """Put a quarantined message back into the pipeline (after a fix)."""
    Message.objects.filter(pk=message_pk, state=Message.State.QUARANTINED).update(
        state=Message.State.STORED, attempts=0, last_error="", quarantined_at=None
    )
    transaction.on_commit(wake_pipeline)
