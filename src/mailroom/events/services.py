"""Writing events. Call inside the transaction of the change the event reports, so that the event
exists if and only if the change was committed (the webhook sender reads undelivered rows)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db import transaction

from mailroom.core.db import insert_dicts
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
    insert_dicts(Event, [{"team_id": t, "kind": k, "payload": p} for t, k, p in rows])
    return len(rows)
