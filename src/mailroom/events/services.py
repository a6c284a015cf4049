"""Writing events. Call inside the transaction of the change the event reports, so that the event
exists if and only if the change was committed.

What must be written *with* an event (the webhooks' delivery outbox: a row per event and endpoint,
so that no event is lost if the process dies after the commit) is written by the **recording
hooks** that the apps above register (:func:`register_recording_hook`, from their ``AppConfig.ready``):
this module never imports them, they learn of events through it."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from django.db import transaction

from mailroom.core.db import insert_dicts
from mailroom.events.models import Event

_KINDS = frozenset(Event.Kind.values)


@dataclass(frozen=True, slots=True)
class Recorded:
    """An event just written, as the recording hooks see it."""

    id: int
    team_id: int
    kind: str


@dataclass(frozen=True, slots=True)
class RecordingHook:
    """``wants(team_ids)``: whether the hook has anything to do for events of these teams (one cheap
    query; when no hook wants them, the INSERT returns nothing). ``handle(events)``: write
    what goes with them, in the same transaction, idempotently."""

    wants: Callable[[set[int]], bool]
    handle: Callable[[list[Recorded]], None]


_hooks: list[RecordingHook] = []


def register_recording_hook(hook: RecordingHook) -> None:
    if hook not in _hooks:
        _hooks.append(hook)


def _wanting(team_ids: set[int]) -> list[RecordingHook]:
    return [h for h in _hooks if h.wants(team_ids)]


def event_record(*, team_id: int, kind: str, payload: dict[str, Any]) -> Event:
    if kind not in _KINDS:
        raise ValueError(f"unknown event kind {kind!r}")
    with transaction.atomic():
        event = Event.objects.create(team_id=team_id, kind=kind, payload=payload)
        hooks = _wanting({team_id})
        for hook in hooks:
            hook.handle([Recorded(event.pk, team_id, kind)])
        return event


def events_record(items: Iterable[tuple[int, str, dict[str, Any]]]) -> int:
    """Record several events at once: ``(team_id, kind, payload)`` tuples, one executemany INSERT
    (the outbox records thousands per second; ``bulk_create`` costs more than the send)."""
    rows = list(items)
    for _, kind, _ in rows:
        if kind not in _KINDS:
            raise ValueError(f"unknown event kind {kind!r}")
    if not rows:
        return 0
    with transaction.atomic(savepoint=False):  # the caller's transaction; no savepoint on the hot path
        teams = {t for t, _, _ in rows}
        hooks = _wanting(teams)
        values = [{"team_id": t, "kind": k, "payload": p} for t, k, p in rows]
        if not hooks:
            insert_dicts(Event, values)
        else:  # the hooks need the new rows' ids: the INSERT returns them
            recorded = [
                Recorded(pk, team, kind)
                for pk, team, kind in insert_dicts(Event, values, returning=("id", "team_id", "kind"))
            ]
            for hook in hooks:
                hook.handle(recorded)
    return len(rows)
