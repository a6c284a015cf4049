"""Writing events. Call inside the transaction of the change the event reports, so that the event
exists if and only if the change was committed (the webhook sender reads undelivered rows)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from mailroom.events.models import Event

_KINDS = frozenset(Event.Kind.values)


def event_record(*, team_id: int, kind: str, payload: dict[str, Any]) -> Event:
    if kind not in _KINDS:
        raise ValueError(f"unknown event kind {kind!r}")
    with transaction.atomic():
        return Event.objects.create(team_id=team_id, kind=kind, payload=payload)


def events_record(items: Iterable[tuple[int, str, dict[str, Any]]]) -> int:
    """Record several events at once: ``(team_id, kind, payload)`` tuples, one executemany INSERT
    (the outbox records thousands per second; ``bulk_create`` costs more than the send)."""
    rows = list(items)
    for _, kind, _ in rows:
        if kind not in _KINDS:
            raise ValueError(f"unknown event kind {kind!r}")
    if not rows:
        return 0
    meta = Event._meta
    q = connection.ops.quote_name
    payload_field = meta.get_field("payload")
    created = connection.ops.adapt_datetimefield_value(timezone.now())
    column = {f.name: f.column for f in meta.concrete_fields}
    cols = ", ".join(q(column[name]) for name in ("team", "kind", "payload", "created_at"))
    sql = f"INSERT INTO {q(meta.db_table)} ({cols}) VALUES (%s, %s, %s, %s)"  # noqa: S608 - quoted identifiers
    with transaction.atomic(), connection.cursor() as cur:
        cur.executemany(sql, [(t, k, payload_field.get_db_prep_save(p, connection), created) for t, k, p in rows])
    return len(rows)
