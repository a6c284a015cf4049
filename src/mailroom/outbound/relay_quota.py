"""Quotas of the relay endpoint: messages accepted per relay token and per team, in the database.

Fixed windows of ``MAILROOM_RELAY_QUOTA_WINDOW_SECONDS`` (an hour by default), aligned on the epoch,
so every endpoint process (and a restarted one) counts in the same row: at most
``MAILROOM_RELAY_QUOTA_PER_TOKEN`` messages per relay address and ``MAILROOM_RELAY_QUOTA_PER_TEAM``
per team in a window. What counts is an *accepted* message (stored, held for review, or relayed),
counted in the transaction that commits it, so a message that is refused or fails is not counted,
and a counted one is never dropped: once a quota is used up the endpoint answers ``451 4.7.1`` and
the sending MTA retries in a later window. A redelivery of a message already stored (same source
key) is not counted again. Only this deployment's own signed and live relay addresses ever reach
a counter, so a forger cannot spend anybody's quota.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db.models import F, Q
from django.utils import timezone

from mailroom.outbound.models import RelayQuotaWindow, RelayToken

log = logging.getLogger(__name__)

Scope = RelayQuotaWindow.Scope


class RelayQuotaExceeded(Exception):
    """Raised inside the accepting transaction when a quota is used up: roll back, answer 451."""

    def __init__(self, scope: str) -> None:
        super().__init__(scope)
        self.scope = scope


@dataclass(frozen=True, slots=True)
class _Counter:
    scope: str
    scope_id: int
    limit: int


def quota_window_seconds() -> int:
    return max(60, int(settings.MAILROOM_RELAY_QUOTA_WINDOW_SECONDS))


def quota_window_start(now: datetime | None = None) -> datetime:
    """The start of the window ``now`` (default: the present) falls in."""
    seconds = quota_window_seconds()
    ts = int((now or timezone.now()).timestamp())
    return datetime.fromtimestamp(ts - ts % seconds, tz=UTC)


def _counters(token: RelayToken) -> list[_Counter]:
    # Always token before team: concurrent transactions take the row locks in one order.
    return [
        _Counter(Scope.TOKEN, token.pk, max(1, int(settings.MAILROOM_RELAY_QUOTA_PER_TOKEN))),
        _Counter(Scope.TEAM, token.team_id, max(1, int(settings.MAILROOM_RELAY_QUOTA_PER_TEAM))),
    ]


def relay_quota_reached(*, token: RelayToken, now: datetime | None = None) -> str | None:
    """The scope (``token`` or ``team``) whose quota is used up in the current window, else None.
    Read only: the answer at RCPT time (the count that matters is :func:`relay_quota_consume`)."""
    counters = _counters(token)
    limits = {(c.scope, c.scope_id): c.limit for c in counters}
    cond = Q()
    for c in counters:
        cond |= Q(scope=c.scope, scope_id=c.scope_id)
    rows = dict(((scope, sid), n) for scope, sid, n in RelayQuotaWindow.objects.filter(
        cond, window_start=quota_window_start(now)).values_list("scope", "scope_id", "accepted"))
    for c in counters:
        if rows.get((c.scope, c.scope_id), 0) >= limits[(c.scope, c.scope_id)]:
            return c.scope
    return None


def relay_quota_consume(*, token: RelayToken, now: datetime | None = None) -> bool:
    """Count one accepted message against its token's and its team's quota. Call it inside the
    transaction that commits the message, after the message is written: the counts commit with it
    or not at all. Raises :class:`RelayQuotaExceeded` (nothing counted once the caller rolls back)
    when a quota is used up. Returns True when this was the team's first message in the window
    (time to :func:`relay_quota_prune`, after the commit)."""
    start = quota_window_start(now)
    counters = _counters(token)
    # INSERT … ON CONFLICT DO NOTHING (SQLite and PostgreSQL): a concurrent first message waits for
    # the other's row instead of failing on the unique constraint.
    RelayQuotaWindow.objects.bulk_create(
        [RelayQuotaWindow(scope=c.scope, scope_id=c.scope_id, window_start=start) for c in counters],
        ignore_conflicts=True,
    )
    for c in counters:
        # One conditional UPDATE: atomic against concurrent endpoints (the row stays locked until
        # the commit), never above the limit.
        updated = RelayQuotaWindow.objects.filter(
            scope=c.scope, scope_id=c.scope_id, window_start=start, accepted__lt=c.limit,
        ).update(accepted=F("accepted") + 1)
        if not updated:
            log.warning("relay.quota_exceeded", extra={"scope": c.scope, "scope_id": c.scope_id, "limit": c.limit})
            raise RelayQuotaExceeded(c.scope)
    team = counters[-1]
    first = RelayQuotaWindow.objects.filter(scope=team.scope, scope_id=team.scope_id, window_start=start,
                                            accepted=1).exists()
    return first


def relay_quota_prune(*, now: datetime | None = None) -> int:
    """Delete the counters of windows before the previous one. Returns how many rows went."""
    cutoff = quota_window_start(now) - timedelta(seconds=quota_window_seconds())
    deleted, _ = RelayQuotaWindow.objects.filter(window_start__lt=cutoff).delete()
    return int(deleted)


def quota_reply_text(scope: str) -> str:
    """The text of the ``451`` answer once a quota is used up (nothing is lost: the MTA retries)."""
    if scope == Scope.TOKEN:
        return "4.7.1 this relay address has reached its quota of messages for now, try again later"
    return "4.7.1 the relay quota of this address's team is used up for now, try again later"
