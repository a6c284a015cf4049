"""Bounces of our own mail: a parsed message whose ``bounce`` names the Message-ID of an outbox row
marks that row's recipient(s) bounced and records a ``message.bounced`` event, in one transaction.

Idempotent: a bounce message already recorded on the row (``recipient_results[addr].bounce_message``)
is skipped, so the pipeline hook and the worker's sweep may both see it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from mailroom.conversations.models import Message
from mailroom.events.models import Event
from mailroom.events.services import events_record
from mailroom.outbound.models import OutboxMessage

log = logging.getLogger(__name__)

FAILED_ACTIONS = frozenset({"failed", ""})  # "delayed", "delivered", "relayed", "expanded" are no bounce


def _clean_id(value: str) -> str:
    return value.strip().strip("<>").strip()


def _recipient_updates(row: OutboxMessage, bounce: dict[str, Any], message_pk: int) -> dict[str, dict[str, Any]]:
    """address -> result entry for the recipients this bounce reports as failed."""
    envelope = [a.lower() for a in row.recipients]
    updates: dict[str, dict[str, Any]] = {}
    listed = list(bounce.get("recipients") or ())
    for r in listed:
        addr = str(r.get("address", "")).strip().strip("<>").lower()
        if str(r.get("action", "")).lower() not in FAILED_ACTIONS or addr not in envelope:
            continue
        updates[addr] = {
            "code": int(r["reply_code"]) if str(r.get("reply_code", "")).isdigit() else None,
            "status": str(r.get("status", "")), "text": str(r.get("diagnostic", ""))[:1000],
            "reason": str(r.get("reason", "")), "hard": bool(r.get("hard", False)),
            "bounced": True, "bounce_message": message_pk,
        }
    if not listed and len(envelope) == 1:  # a free-text bounce naming no recipient, of a one-recipient mail
        updates[envelope[0]] = {"code": None, "status": "", "text": "", "reason": "", "hard": True,
                                "bounced": True, "bounce_message": message_pk}
    return updates


def outbox_bounces_record(*, message_pks: Sequence[int]) -> int:
    """Apply the bounces among ``message_pks`` (parsed messages) to the outbox rows they report on.
    Returns how many bounce messages were recorded (0 for non-bounces, strangers' ids, repeats)."""
    msgs = list(Message.objects.filter(pk__in=list(message_pks), bounce__isnull=False)
                .values_list("pk", "team_id", "bounce"))
    wanted = {(team, _clean_id(str((b or {}).get("original_message_id", "")))): pk for pk, team, b in msgs}
    wanted = {k: v for k, v in wanted.items() if k[1]}
    if not wanted:
        return 0
    bounces = {pk: b for pk, _, b in msgs}
    done = 0
    with transaction.atomic():
        rows = (OutboxMessage.objects.select_for_update()
                .filter(message_id__in=list({mid for _, mid in wanted}), state=OutboxMessage.State.SENT))
        events: list[tuple[int, str, dict[str, Any]]] = []
        for row in rows:
            message_pk = wanted.get((row.team_id, row.message_id))
            if message_pk is None:
                continue
            if Event.objects.filter(team_id=row.team_id, kind=Event.Kind.MESSAGE_BOUNCED,
                                    payload__outbox_id=row.pk, payload__bounce_message=message_pk).exists():
                continue  # recorded already
            updates = _recipient_updates(row, bounces[message_pk] or {}, message_pk)
            row.recipient_results = {**(row.recipient_results or {}), **updates}
            row.last_error_kind = "bounced" if updates else row.last_error_kind
            row.save(update_fields=["recipient_results", "last_error_kind", "updated_at"])
            events.append((row.team_id, Event.Kind.MESSAGE_BOUNCED, {
                "outbox_id": row.pk, "message_id": row.message_id, "mailbox_id": row.mailbox_id,
                "bounce_message": message_pk, "recipients": sorted(updates),
                "hard": any(u["hard"] for u in updates.values()),
                "kind": str((bounces[message_pk] or {}).get("kind", "")),
            }))
            done += 1
        events_record(events)
    if done:
        log.info("outbox.bounces_recorded", extra={"count": done})
    return done


def outbox_bounces_sweep(*, days: int = 7, limit: int = 500) -> int:
    """The worker's safety net: bounces parsed in the last ``days`` not yet applied."""
    since = timezone.now() - timedelta(days=days)
    pks = list(Message.objects.filter(bounce__isnull=False, received_at__gte=since)
               .exclude(state=Message.State.STORED).order_by("-id").values_list("pk", flat=True)[:limit])
    return outbox_bounces_record(message_pks=pks)
