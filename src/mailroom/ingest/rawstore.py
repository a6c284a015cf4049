"""The raw store: bytes + identity rows, committed before anything is acknowledged.

``store_batch`` is the one way mail enters Mailroom (IMAP sync, the LMTP relay endpoint, our own
outbox). It is idempotent on natural identities:

* a message is (team, sha256(Message-ID), content hash); a second copy (another folder, another
  mailbox, the relay address and the manager's INBOX) gains a :class:`Source`, never a copy;
* an IMAP source is (folder, UIDVALIDITY, UID); other sources carry a unique ``key``.

The caller runs it inside its own transaction together with whatever acknowledges the bytes (the
folder cursor), so that a crash at any point leaves either both or neither.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from mailroom.conversations.models import Message, MessageRaw, Source, subject_key
from mailroom.core.blobs import blob_store
from mailroom.core.db import copy_tuples, insert_dicts, insert_tuples
from mailroom.mailboxes.models import Folder, Mailbox
from mailroom.parsing.headers import HeaderSummary, summarize_headers


@dataclass(frozen=True, slots=True)
class IncomingRaw:
    raw: bytes
    uid: int | None = None
    internal_date: datetime | None = None
    key: str | None = None  # natural identity of a non-IMAP source
    summary: HeaderSummary | None = None  # precomputed (e.g. by the IMAP prefetch thread)
    gm_thread_id: str = ""  # provider thread id from the IMAP server (Gmail X-GM-THRID)


@dataclass(slots=True)
class StoreResult:
    new_messages: int = 0
    new_sources: int = 0
    known_sources: int = 0
    message_pks: list[int] = field(default_factory=list)  # one per item, in order


def message_id_hash(message_id: str) -> str:
    return hashlib.sha256(message_id.encode("utf-8", "surrogateescape")).hexdigest()


def _direction(folder: Folder | None) -> str:
    """Outgoing only on evidence we trust: the copy sits in the mailbox's Sent folder (or the caller,
    e.g. our outbox, says so). A From header naming our own address proves nothing: anyone can
    write it; linking may still decide "outgoing" when the sender is authenticated."""
    if folder is not None and folder.role == Folder.Role.SENT:
        return Message.Direction.OUTGOING
    return Message.Direction.INCOMING


def _append_ahead(team_id: int, items: Sequence[IncomingRaw], idents: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """Raw store "files": append the bytes of the messages not stored yet to a segment file (one
    fdatasync) *before* the batch's transaction, so that the database's write lock is not held
    during the disk flush (the pipeline, writing beside the import, waited for it). A message
    stored by someone else in between leaves unreferenced bytes, as a crash would (ADR 4)."""
    if settings.MAILROOM_RAW_STORE != "files":
        return {}
    stored = set(
        Message.objects.filter(team_id=team_id, message_id_hash__in={m for m, _ in idents}).values_list(
            "message_id_hash", "content_hash"
        )
    )
    fresh: dict[tuple[str, str], bytes] = {}
    for item, ident in zip(items, idents, strict=True):
        if ident not in stored and ident not in fresh:
            fresh[ident] = item.raw
    return dict(zip(fresh, blob_store().append(list(fresh.values())), strict=True))


def _insert_raws(rows: list[tuple[int, bytes]], refs: Sequence[str | None] = ()) -> None:
    """Store raw bytes: appended to a segment file (raw store "files": written once, one fdatasync
    for the batch, before the caller commits the rows that point at them) or into the database.
    ``refs``: where bytes were appended already (``_append_ahead``), per row; the rest are appended
    here.

    Either way ONE fixed statement, row by row (executemany), not bulk_create: a multi-row INSERT
    has a different SQL text for every batch size, and the database driver caches each prepared
    statement together with its bound parameters, so every cached statement would keep a batch's
    worth of message bytes alive (hundreds of MB). Bytes into PostgreSQL go by COPY instead
    (``_pg_copy_raws``: no statement, nothing cached)."""
    if not rows:
        return
    if settings.MAILROOM_RAW_STORE != "files" and connection.vendor == "postgresql" and _pg_copy_raws(rows):
        return
    table = connection.ops.quote_name(MessageRaw._meta.db_table)
    if settings.MAILROOM_RAW_STORE == "files":
        known = list(refs) if refs else [None] * len(rows)
        missing = [i for i, ref in enumerate(known) if ref is None]
        appended = iter(blob_store().append([rows[i][1] for i in missing]))
        sql = f"INSERT INTO {table} (message_id, data, blob) VALUES (%s, NULL, %s)"  # noqa: S608 - fixed identifiers
        params: list[tuple[int, str | bytes]] = [
            (pk, ref if ref is not None else next(appended)) for (pk, _), ref in zip(rows, known, strict=True)
        ]
        if connection.vendor == "postgresql":  # no bytes in these rows: one JSON document, not a row a statement
            insert_tuples(MessageRaw, ["message_id", "blob"], params, ignore_conflicts=True)
            return
    else:
        sql = f"INSERT INTO {table} (message_id, data, blob) VALUES (%s, %s, '')"  # noqa: S608 - fixed identifiers
        params = list(rows)
    if connection.vendor == "postgresql":
        sql += " ON CONFLICT DO NOTHING"
    elif connection.vendor == "sqlite":
        sql = sql.replace("INSERT INTO", "INSERT OR IGNORE INTO", 1)
    with connection.cursor() as cur:
        cur.executemany(sql, params)


def _pg_copy_raws(rows: list[tuple[int, bytes]]) -> bool:
    """PostgreSQL, bytes in the database: the rows by binary COPY, in a savepoint of the caller's
    transaction. An INSERT sends the bytes as a literal the driver escapes in Python (client-side
    binding) and the server parses back; COPY sends them as they are. Measured on 2,000 messages
    (130 MB) in batches of 100: 0.06 s of client CPU and 0.5-0.9 s of the server's, against 0.4-0.5
    and 2.2-2.6 s for the executemany (a COPY into a temporary table, then INSERT ... SELECT ... ON
    CONFLICT DO NOTHING: 2.9-3.0 s of the server's, the bytes written twice).

    COPY has no ON CONFLICT: a raw row already there (the same message stored by another worker
    between our look-up and our insert: the same mail in two mailboxes of a team) fails the whole
    COPY. Then the savepoint is rolled back and False returned: the caller's INSERT ... ON CONFLICT
    DO NOTHING stores the rows (rare, so its cost does not matter)."""
    try:
        with transaction.atomic():  # a savepoint: the caller's transaction goes on after a conflict
            copy_tuples(MessageRaw, ["message_id", "data", "blob"], [(pk, data, "") for pk, data in rows])
    except IntegrityError:
        return False
    return True


def _record_new_mail_events(team_id: int, mailbox: Mailbox | None, created: list[tuple[int, dict[str, Any]]]) -> None:
    """Webhook events in the same transaction: a message received, or sent from the manager's own
    mail client (a new message in Sent; mail sent from Mailroom is recorded by the outbox)."""
    from mailroom.events.models import Event
    from mailroom.events.services import events_record

    events_record(
        (
            team_id,
            Event.Kind.MESSAGE_RECEIVED if m["direction"] == Message.Direction.INCOMING else Event.Kind.MESSAGE_SENT,
            {
                "message": pk,
                "message_id": m["message_id"],
                "mailbox_id": mailbox.pk if mailbox else None,
                "via": "imap" if m["direction"] == Message.Direction.INCOMING else "mail client",
            },
        )
        for pk, m in created
    )


@dataclass
class StorePrep:
    """What storing a batch works out before its transaction (``store_prepare``)."""

    items: Sequence[IncomingRaw]
    summaries: list[HeaderSummary]
    idents: list[tuple[str, str]]  # (Message-ID hash, content hash) per item
    appended: dict[tuple[str, str], str]  # where the bytes of new messages were appended


def store_prepare(*, team_id: int, items: Sequence[IncomingRaw]) -> StorePrep:
    """The part of storing a batch that needs no write lock: the header summaries and, with the raw
    store "files", the bytes of the messages not stored yet appended to a segment file (one
    fdatasync). A caller that stores inside a transaction of its own (the IMAP sync: the batch and
    its cursor commit together) calls this before opening it and passes the result to
    ``store_batch``: the transaction takes the database's write lock at once (IMMEDIATE), and the
    pipeline, writing beside the import, waited for it. Measured on bench/import_bench.py: of the
    import's 16 s, the write lock was held 14 s, 3.9 s of them over these appends."""
    summaries = [item.summary or summarize_headers(item.raw) for item in items]
    idents = [(message_id_hash(s.message_id), s.content_hash) for s in summaries]
    return StorePrep(items, summaries, idents, _append_ahead(team_id, items, idents))


def store_batch(
    *,
    team_id: int,
    items: Sequence[IncomingRaw],
    kind: str,
    mailbox: Mailbox | None = None,
    folder: Folder | None = None,
    uidvalidity: int | None = None,
    direction: str | None = None,
    prepared: StorePrep | None = None,
    live: bool = False,
) -> StoreResult:
    """Store a batch of raw messages and their sources, exactly once (idempotent by source and by
    message identity). ``prepared``: ``store_prepare`` of these same items, done before the
    caller's transaction. ``live``: new mail as it arrives (a small fetch after IDLE or a poll, the
    relay endpoint, our outbox), not a backlog import: its new messages take the pipeline's
    priority lane (``Message.live``, conversations/pipeline.py)."""
    result = StoreResult()
    if not items:
        return result
    now = timezone.now()
    if prepared is None:
        prepared = store_prepare(team_id=team_id, items=items)
    elif prepared.items is not items:
        raise ValueError("store_batch: prepared for other items")
    summaries, idents, appended = prepared.summaries, prepared.idents, prepared.appended
    batch_direction = direction or _direction(folder)

    with transaction.atomic():
        # Which sources do we hold already? (A retried batch after a crash, or a concurrent worker.)
        known_keys: set[object] = set()
        if kind == Source.Kind.IMAP:
            uids = [i.uid for i in items if i.uid is not None]
            known_keys = set(
                Source.objects.filter(
                    kind=kind, folder=folder, uidvalidity=uidvalidity, uid__in=uids
                ).values_list("uid", flat=True)
            )
        else:
            keys = [i.key for i in items if i.key]
            known_keys = set(Source.objects.filter(key__in=keys).values_list("key", flat=True))

        existing: dict[tuple[str, str], int] = {}
        for pk, mh, ch in Message.objects.filter(
            team_id=team_id, message_id_hash__in={m for m, _ in idents}
        ).values_list("id", "message_id_hash", "content_hash"):
            existing[(mh, ch)] = pk

        to_create: dict[tuple[str, str], tuple[dict[str, Any], bytes]] = {}
        for item, summary, ident in zip(items, summaries, idents, strict=True):
            if ident in existing or ident in to_create:
                continue
            first = summary.from_[0] if summary.from_ else None
            msg = {  # a row, not a model instance: building one costs more than inserting it
                "team_id": team_id,
                "message_id": summary.message_id,
                "message_id_hash": ident[0],
                "message_id_synthesised": summary.message_id_synthesised,
                "content_hash": ident[1],
                "size": len(item.raw),
                "subject": summary.subject[:5000],
                "from_address": first.address[:320] if first else "",
                "from_name": first.name[:300] if first else "",
                "date": summary.date or item.internal_date or now,
                "received_at": now,
                "in_reply_to": list(summary.in_reply_to),
                "references": list(summary.references),
                "direction": batch_direction,
                "routing_headers": {"gm_thread_id": item.gm_thread_id} if item.gm_thread_id else {},
                "live": live,
                "subject_key": subject_key(summary.subject[:5000]),
            }
            to_create[ident] = (msg, item.raw)

        if to_create:
            rows = [m for m, _ in to_create.values()]
            if connection.vendor == "postgresql":
                # The rows this statement inserted: another transaction may have stored the same
                # message since we looked (the same mail in two folders synced at once, or by IMAP and
                # LMTP): its insert wins, ours is skipped, and it is not new here (no second event).
                inserted = insert_dicts(
                    Message, rows, ignore_conflicts=True, returning=("id", "message_id_hash", "content_hash")
                )
                created_ids = {(mh, ch): pk for pk, mh, ch in inserted}
            else:
                # SQLite has one writer, and this transaction (IMMEDIATE) held the lock when it looked:
                # what is there now and was not then is ours. One fixed statement (executemany): a
                # multi-row INSERT ... RETURNING has a text per batch size, each cached by the driver
                # with its bound values.
                insert_dicts(Message, rows, ignore_conflicts=True)
                created_ids = {
                    (mh, ch): pk
                    for pk, mh, ch in Message.objects.filter(
                        team_id=team_id, message_id_hash__in={k[0] for k in to_create}
                    ).values_list("id", "message_id_hash", "content_hash")
                    if (mh, ch) in to_create
                }
            ours = {k: v for k, v in to_create.items() if k in created_ids}
            if len(ours) < len(to_create):
                existing.update(
                    ((mh, ch), pk)
                    for pk, mh, ch in Message.objects.filter(
                        team_id=team_id, message_id_hash__in={k[0] for k in to_create if k not in created_ids}
                    ).values_list("id", "message_id_hash", "content_hash")
                )
            _insert_raws([(created_ids[k], raw) for k, (_, raw) in ours.items()], [appended.get(k) for k in ours])
            existing.update(created_ids)
            result.new_messages = len(created_ids)
            if kind == Source.Kind.IMAP:
                _record_new_mail_events(team_id, mailbox, [(created_ids[k], m) for k, (m, _) in ours.items()])

        if batch_direction == Message.Direction.OUTGOING and existing:
            # A message we first saw arriving (a colleague's INBOX) turns out to be ours (our Sent).
            # If it was already linked as incoming (e.g. flagged "claims our address"), link it again.
            upgraded = Message.objects.filter(
                pk__in=[existing[i] for i in idents if i in existing], direction=Message.Direction.INCOMING
            )
            upgraded.filter(state=Message.State.LINKED).update(
                direction=Message.Direction.OUTGOING, state=Message.State.PARSED
            )
            upgraded.update(direction=Message.Direction.OUTGOING)

        sources: list[dict[str, Any]] = []
        mailbox_id = mailbox.pk if mailbox is not None else None
        folder_id = folder.pk if folder is not None else None
        for item, ident in zip(items, idents, strict=True):
            pk = existing[ident]
            result.message_pks.append(pk)
            marker = item.uid if kind == Source.Kind.IMAP else item.key
            if marker in known_keys:
                result.known_sources += 1
                continue
            known_keys.add(marker)
            sources.append({
                "message_id": pk,
                "mailbox_id": mailbox_id,
                "kind": kind,
                "folder_id": folder_id,
                "uidvalidity": uidvalidity,
                "uid": item.uid,
                "key": item.key,
                "internal_date": item.internal_date,
            })
        insert_dicts(Source, sources, ignore_conflicts=True)
        result.new_sources = len(sources)
        if result.new_messages:
            from mailroom.conversations.pipeline import wake_pipeline

            transaction.on_commit(wake_pipeline)
    return result


def store_one(*, team_id: int, raw: bytes, kind: str, key: str, mailbox: Mailbox | None = None,
              direction: str | None = None) -> tuple[int, bool]:
    """Store one message from a non-IMAP source (live mail: see ``store_batch``). Returns (message
    pk, whether the source is new)."""
    res = store_batch(
        team_id=team_id, items=[IncomingRaw(raw=raw, key=key)], kind=kind, mailbox=mailbox, direction=direction,
        live=True,
    )
    return res.message_pks[0], res.new_sources == 1
