"""Webhook endpoints (create, update, rotate, enable/disable, delete), the delivery outbox written
with each event (the recording hook), and delivering due rows (claim an endpoint, POST its due
deliveries one at a time, log every attempt, reschedule or fail).

Services own their transaction; a secret is returned only by the service that made it."""

from __future__ import annotations

import base64
import json
import logging
import os
import random
import secrets
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Exists, F, OuterRef, Q, QuerySet
from django.utils import timezone
from standardwebhooks import Webhook

from mailroom.core.db import insert_dicts
from mailroom.core.errors import Conflict, InvalidInput
from mailroom.core.netguard import BlockedURL
from mailroom.events.models import Event
from mailroom.events.services import Recorded, RecordingHook, event_record
from mailroom.webhooks.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint, url_origin, webhook_id
from mailroom.webhooks.transport import Outcome, Session, check_url

log = logging.getLogger(__name__)

EVENT_TYPES = frozenset(Event.Kind.values)
webhook_wakeup = threading.Event()
BATCH = 50
REPLAY_LIMIT = 10_000


def new_secret() -> str:
    """``whsec_`` + base64 of 24 random bytes (what ``standardwebhooks.Webhook`` takes)."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def new_worker_id() -> str:
    return f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


# --- endpoints ----------------------------------------------------------------------------------


def _clean_url(url: str) -> str:
    url = url.strip()
    if len(url) > 2000:
        raise InvalidInput("url: at most 2000 characters", field="url")
    try:
        check_url(url, resolve_host=False)
    except BlockedURL as exc:
        raise InvalidInput(f"url: {exc}", field="url") from exc
    return url


def _clean_types(types: Sequence[str]) -> list[str]:
    unknown = sorted(set(types) - EVENT_TYPES)
    if unknown:
        raise InvalidInput(f"event_types: unknown event type {unknown[0]!r} (known: {', '.join(sorted(EVENT_TYPES))})",
                           field="event_types")
    return sorted(set(types))


@dataclass(frozen=True, slots=True)
class WithSecret:
    """An endpoint and its new secret: the only time the secret leaves the database."""

    endpoint: WebhookEndpoint
    secret: str


def webhook_endpoint_create(*, team_id: int, url: str, event_types: Sequence[str] = (), description: str = "",
                            enabled: bool = True, user: Any = None) -> WithSecret:
    secret = new_secret()
    endpoint = WebhookEndpoint(team_id=team_id, url=_clean_url(url), event_types=_clean_types(event_types),
                               description=description.strip(), enabled=enabled,
                               created_by=user if getattr(user, "pk", None) else None)
    endpoint.set_secret(secret)
    with transaction.atomic():
        endpoint.save()
    log.info("webhooks.endpoint_created", extra={"endpoint": endpoint.pk, "team": team_id})
    return WithSecret(endpoint, secret)


def webhook_endpoint_update(*, endpoint: WebhookEndpoint, url: str | None = None,
                            event_types: Sequence[str] | None = None, description: str | None = None,
                            enabled: bool | None = None, rotate_secret: bool = False) -> WithSecret | WebhookEndpoint:
    """Change an endpoint. A URL on another scheme, host or port needs ``rotate_secret``: the stored
    secret never follows a changed destination (the new one is returned once, and no previous secret
    signs beside it)."""
    with transaction.atomic():
        ep = WebhookEndpoint.objects.select_for_update().get(pk=endpoint.pk)
        secret = ""
        bump = False
        if url is not None:
            url = _clean_url(url)
            if url_origin(url) != url_origin(ep.url) and not rotate_secret:
                raise Conflict("url: the new URL is on another host: the secret does not follow it; send "
                               "rotate_secret: true to issue a new one (shown once)", field="url")
            bump = url != ep.url
            ep.url = url
        if rotate_secret:
            secret = new_secret()
            ep.set_secret(secret)
            ep.set_previous_secret("")
            ep.previous_secret_expires_at = None
            bump = True
        if event_types is not None:
            ep.event_types = _clean_types(event_types)
        if description is not None:
            ep.description = description.strip()
        if enabled is not None and enabled != ep.enabled:
            _set_enabled(ep, enabled)
            bump = True
        if bump:
            ep.version = F("version") + 1
        ep.save()
        ep.refresh_from_db()
    if enabled:
        transaction.on_commit(webhook_wakeup.set)
    return WithSecret(ep, secret) if secret else ep


def _set_enabled(ep: WebhookEndpoint, enabled: bool, reason: str = "") -> None:
    ep.enabled = enabled
    ep.disabled_reason = "" if enabled else (reason or "disabled by a user")
    if enabled:
        ep.failing_since = None


def webhook_endpoint_set_enabled(*, endpoint: WebhookEndpoint, enabled: bool) -> WebhookEndpoint:
    result = webhook_endpoint_update(endpoint=endpoint, enabled=enabled)
    assert isinstance(result, WebhookEndpoint)
    return result


def webhook_secret_rotate(*, endpoint: WebhookEndpoint, overlap_seconds: int | None = None) -> WithSecret:
    """A new secret (returned once); the current one keeps signing beside it for the overlap
    (``MAILROOM_WEBHOOK_SECRET_OVERLAP``), so receivers can switch without losing a delivery."""
    overlap = settings.MAILROOM_WEBHOOK_SECRET_OVERLAP if overlap_seconds is None else overlap_seconds
    secret = new_secret()
    with transaction.atomic():
        ep = WebhookEndpoint.objects.select_for_update().get(pk=endpoint.pk)
        old = ep.get_secret()
        ep.set_secret(secret)
        if overlap > 0:
            ep.set_previous_secret(old)
            ep.previous_secret_expires_at = timezone.now() + timedelta(seconds=overlap)
        else:
            ep.set_previous_secret("")
            ep.previous_secret_expires_at = None
        ep.version = F("version") + 1
        ep.save()
        ep.refresh_from_db()
    log.info("webhooks.secret_rotated", extra={"endpoint": ep.pk, "overlap": overlap})
    return WithSecret(ep, secret)


def webhook_endpoint_delete(*, endpoint: WebhookEndpoint) -> None:
    with transaction.atomic():
        WebhookEndpoint.objects.filter(pk=endpoint.pk).delete()


# --- the delivery outbox, written with the events --------------------------------------------------


def _teams_with_endpoints(team_ids: set[int]) -> bool:
    return WebhookEndpoint.objects.filter(team_id__in=team_ids, enabled=True).exists()


def _schedule() -> list[float]:
    return [float(s) for s in settings.MAILROOM_WEBHOOK_RETRY_SCHEDULE] or [0.0]


def _jittered(delay: float) -> float:
    return delay * random.uniform(0.8, 1.2) if delay > 0 else 0.0


def _write_deliveries(events: list[Recorded]) -> None:
    """The recording hook: a pending delivery per event and enabled endpoint of its team that takes its
    kind, in the event's transaction (ON CONFLICT DO NOTHING: idempotent)."""
    if not events:
        return
    endpoints = list(WebhookEndpoint.objects.filter(team_id__in={e.team_id for e in events}, enabled=True)
                     .values_list("id", "team_id", "event_types"))
    if not endpoints:
        return
    first = timezone.now() + timedelta(seconds=_jittered(_schedule()[0]))
    rows = [{"event_id": e.id, "endpoint_id": ep_id, "next_attempt_at": first}
            for e in events for ep_id, team_id, types in endpoints
            if team_id == e.team_id and (not types or e.kind in types)]
    if rows:
        insert_dicts(WebhookDelivery, rows, ignore_conflicts=True)
        transaction.on_commit(webhook_wakeup.set)


RECORDING_HOOK = RecordingHook(wants=_teams_with_endpoints, handle=_write_deliveries)


# --- payloads and signatures ---------------------------------------------------------------------


def payload_bytes(event: Event) -> bytes:
    """The body, exactly as signed and sent: ``{type, timestamp, data}``, data being the event's
    payload with its ids. Compact JSON, keys sorted: the same bytes on every attempt."""
    data = {**event.payload, "event_id": event.pk, "team_id": event.team_id}
    body = {"type": event.kind, "timestamp": event.created_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "data": data}
    return json.dumps(body, separators=(",", ":"), sort_keys=True, ensure_ascii=False, default=str).encode()


def sign_headers(*, msg_id: str, body: bytes, secrets_: Sequence[str], now: float | None = None) -> dict[str, str]:
    ts = int(now if now is not None else timezone.now().timestamp())
    stamp = datetime.fromtimestamp(ts, tz=UTC)
    signature = " ".join(Webhook(s).sign(msg_id, stamp, body) for s in secrets_ if s)
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": signature}


def _signing_secrets(ep: WebhookEndpoint, now: datetime) -> list[str]:
    out = [ep.get_secret()]
    if ep.previous_secret_enc and ep.previous_secret_expires_at and ep.previous_secret_expires_at > now:
        out.append(ep.get_previous_secret())
    return out


# --- delivering ----------------------------------------------------------------------------------


def _lease() -> timedelta:
    return timedelta(seconds=settings.MAILROOM_WEBHOOK_LEASE_SECONDS)


def _due_endpoints(now: datetime) -> QuerySet[WebhookEndpoint]:
    due = WebhookDelivery.objects.filter(endpoint_id=OuterRef("pk"), state=WebhookDelivery.State.PENDING,
                                         next_attempt_at__lte=now)
    return (WebhookEndpoint.objects.filter(enabled=True)
            .filter(Q(lease_until__isnull=True) | Q(lease_until__lt=now))
            .filter(Exists(due)))


def webhook_claim_endpoints(*, worker_id: str, limit: int, exclude: Sequence[int] = ()) -> list[int]:
    """Lease up to ``limit`` enabled endpoints that have due deliveries and no live lease (the least
    recently leased first, so every endpoint gets its turn). PostgreSQL: ``FOR UPDATE SKIP LOCKED``;
    SQLite has one writer. The conditional UPDATE lets one claimer win a row either way."""
    if limit <= 0:
        return []
    now = timezone.now()
    until = now + _lease()
    with transaction.atomic():
        qs = _due_endpoints(now).exclude(pk__in=list(exclude)).order_by(F("lease_until").asc(nulls_first=True), "id")
        if connection.vendor == "postgresql":
            qs = qs.select_for_update(skip_locked=True, of=("self",))
        ids = list(qs.values_list("id", flat=True)[:limit])
        if not ids:
            return []
        WebhookEndpoint.objects.filter(pk__in=ids).filter(Q(lease_until__isnull=True) | Q(lease_until__lt=now)).update(
            lease_owner=worker_id, lease_until=until)
        return list(WebhookEndpoint.objects.filter(pk__in=ids, lease_owner=worker_id, lease_until=until)
                    .values_list("id", flat=True))


def webhook_release_endpoint(*, endpoint_id: int, worker_id: str) -> None:
    """Give the lease back, keeping its time (the fairness order: least recently leased first)."""
    WebhookEndpoint.objects.filter(pk=endpoint_id, lease_owner=worker_id).update(
        lease_owner="", lease_until=timezone.now())


def _next_attempt(attempts_done: int, now: datetime) -> datetime | None:
    schedule = _schedule()
    if attempts_done >= len(schedule):
        return None
    return now + timedelta(seconds=_jittered(schedule[attempts_done]))


def _record(*, ep: WebhookEndpoint, delivery: WebhookDelivery, worker_id: str, started: datetime, ts: int,
            outcome: Outcome) -> bool:
    """Log the attempt and reschedule or finish the delivery, fenced on the endpoint's lease and
    version (renewing the lease). False: the lease was lost or the endpoint changed; nothing written."""
    now = timezone.now()
    with transaction.atomic():
        fenced = WebhookEndpoint.objects.filter(pk=ep.pk, lease_owner=worker_id, version=ep.version, enabled=True)
        tracking: dict[str, Any] = ({"failing_since": None, "last_success_at": now} if outcome.success
                                    else {"last_failure_at": now})
        if not fenced.update(lease_until=now + _lease(), **tracking):
            return False
        WebhookAttempt.objects.create(
            delivery=delivery, endpoint_id=ep.pk, started_at=started, webhook_timestamp=ts,
            duration_ms=outcome.duration_ms, status_code=outcome.status, response_excerpt=outcome.excerpt,
            error=outcome.error, success=outcome.success)
        attempts = delivery.attempts + 1
        rows = WebhookDelivery.objects.filter(pk=delivery.pk, state=WebhookDelivery.State.PENDING,
                                              attempts=delivery.attempts)
        error = outcome.error or ("" if outcome.success else f"HTTP {outcome.status}")
        if outcome.success:
            rows.update(state=WebhookDelivery.State.DELIVERED, attempts=attempts, delivered_at=now, next_attempt_at=None,
                        last_status=outcome.status, last_error="")
            return True
        nxt = _next_attempt(attempts, now)
        if nxt is None:
            rows.update(state=WebhookDelivery.State.FAILED, attempts=attempts, failed_at=now, next_attempt_at=None,
                        last_status=outcome.status, last_error=error)
        else:
            rows.update(attempts=attempts, next_attempt_at=nxt, last_status=outcome.status, last_error=error)
        WebhookEndpoint.objects.filter(pk=ep.pk, failing_since__isnull=True).update(failing_since=now)
        limit = timedelta(seconds=settings.MAILROOM_WEBHOOK_DISABLE_AFTER)
        failing_since = WebhookEndpoint.objects.filter(pk=ep.pk).values_list("failing_since", flat=True).first()
        if failing_since is not None and now - failing_since >= limit:
            _disable_failing(ep, failing_since, error)
            return False
        return True


def _disable_failing(ep: WebhookEndpoint, failing_since: datetime, error: str) -> None:
    reason = f"failing since {failing_since.isoformat()}: {error}"[:500]
    WebhookEndpoint.objects.filter(pk=ep.pk).update(
        enabled=False, disabled_reason=reason, version=F("version") + 1, lease_owner="", lease_until=timezone.now())
    log.warning("webhooks.endpoint_disabled", extra={"endpoint": ep.pk, "team": ep.team_id, "reason": reason})
    # The team's admins are told through an event (its own webhooks, the event feed).
    event_record(team_id=ep.team_id, kind=Event.Kind.WEBHOOK_ENDPOINT_DISABLED,
                 payload={"endpoint_id": ep.pk, "url": ep.url, "failing_since": failing_since.isoformat(),
                          "reason": reason})


def webhook_deliver_endpoint(*, endpoint_id: int, worker_id: str, budget: float = 10.0) -> int:
    """Deliver the due deliveries of one leased endpoint, one at a time (oldest first) on one kept
    connection, until none is due, an attempt fails (the rest wait for their turn, so a dead endpoint
    gets one attempt a round), ``budget`` seconds have passed, or the lease is lost. Returns the
    number of attempts made."""

    ep = WebhookEndpoint.objects.filter(pk=endpoint_id, lease_owner=worker_id, enabled=True).first()
    if ep is None:
        return 0
    session = Session(ep.url, timeout=settings.MAILROOM_WEBHOOK_TIMEOUT)
    attempts = 0
    deadline = time.monotonic() + budget
    try:
        while time.monotonic() < deadline:
            now = timezone.now()
            due = list(WebhookDelivery.objects.filter(endpoint_id=ep.pk, state=WebhookDelivery.State.PENDING,
                                                      next_attempt_at__lte=now)
                       .select_related("event").order_by("next_attempt_at", "event_id")[:BATCH])
            if not due:
                break
            keys = _signing_secrets(ep, now)
            for delivery in due:
                body = payload_bytes(delivery.event)
                started = timezone.now()
                headers = sign_headers(msg_id=webhook_id(delivery.event_id, ep.pk), body=body, secrets_=keys)
                outcome = session.post(body, headers)
                attempts += 1
                if not _record(ep=ep, delivery=delivery, worker_id=worker_id, started=started,
                               ts=int(headers["webhook-timestamp"]), outcome=outcome):
                    return attempts
                log.info("webhooks.attempt", extra={"endpoint": ep.pk, "delivery": delivery.pk,
                                                    "status": outcome.status, "ms": outcome.duration_ms})
                if not outcome.success or time.monotonic() >= deadline:
                    return attempts
        return attempts
    finally:
        session.close()
        webhook_release_endpoint(endpoint_id=ep.pk, worker_id=worker_id)


def webhook_deliver_due(*, worker_id: str | None = None, limit: int = 100) -> int:
    """One round in this thread (CLI, tests): every claimable endpoint, one after another."""
    worker_id = worker_id or new_worker_id()
    done = 0
    for endpoint_id in webhook_claim_endpoints(worker_id=worker_id, limit=limit):
        done += webhook_deliver_endpoint(endpoint_id=endpoint_id, worker_id=worker_id)
    return done


# --- replay --------------------------------------------------------------------------------------


def webhook_delivery_replay(*, delivery: WebhookDelivery) -> WebhookDelivery:
    """Send one delivery again (the same ``webhook-id``), now, with a fresh retry schedule."""
    with transaction.atomic():
        WebhookDelivery.objects.filter(pk=delivery.pk).update(
            state=WebhookDelivery.State.PENDING, attempts=0, next_attempt_at=timezone.now(), failed_at=None)
    transaction.on_commit(webhook_wakeup.set)
    delivery.refresh_from_db()
    return delivery


def webhook_replay_since(*, endpoint: WebhookEndpoint, since: datetime) -> int:
    """Every event of the endpoint's team since ``since`` that the endpoint takes, delivered again (or
    for the first time: events recorded while it was disabled or before it existed), at most
    ``REPLAY_LIMIT``. Returns how many deliveries were scheduled."""
    now = timezone.now()
    events = Event.objects.filter(team_id=endpoint.team_id, created_at__gte=since).order_by("id")
    if endpoint.event_types:
        events = events.filter(kind__in=endpoint.event_types)
    ids = list(events.values_list("id", flat=True)[:REPLAY_LIMIT])
    with transaction.atomic():
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            insert_dicts(WebhookDelivery, [{"event_id": e, "endpoint_id": endpoint.pk, "next_attempt_at": now}
                                           for e in chunk], ignore_conflicts=True)
            WebhookDelivery.objects.filter(endpoint_id=endpoint.pk, event_id__in=chunk).update(
                state=WebhookDelivery.State.PENDING, attempts=0, next_attempt_at=now, failed_at=None)
    transaction.on_commit(webhook_wakeup.set)
    return len(ids)
