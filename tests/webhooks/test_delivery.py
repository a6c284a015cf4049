"""Webhook delivery to a real receiver on loopback: signatures (verified with ``standardwebhooks``),
the outbox written with the event, retries with a stable webhook-id and fresh signatures, rotation,
the retry schedule's end, disabling a failing endpoint, leases."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import Any

import pytest
from django.db import transaction
from django.utils import timezone
from standardwebhooks import Webhook, WebhookVerificationError

from mailroom.events.models import Event
from mailroom.events.services import event_record, events_record
from mailroom.webhooks.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from mailroom.webhooks.services import (
    webhook_claim_endpoints,
    webhook_deliver_due,
    webhook_endpoint_create,
    webhook_replay_since,
    webhook_secret_rotate,
)
from tests.factories import TeamFactory
from tests.webhooks.conftest import Receiver

pytestmark = pytest.mark.django_db


def _endpoint(team: Any, url: str, **kw: Any) -> tuple[WebhookEndpoint, str]:
    made = webhook_endpoint_create(team_id=team.pk, url=url, **kw)
    return made.endpoint, made.secret


def _received(team: Any, **payload: Any) -> Event:
    return event_record(team_id=team.pk, kind=Event.Kind.MESSAGE_RECEIVED, payload={"message": 7, **payload})


def test_event_writes_its_delivery_in_the_same_transaction(team: Any) -> None:
    ep, _ = _endpoint(team, "https://hooks.example.com/a")
    only_sent, _ = _endpoint(team, "https://hooks.example.com/b", event_types=["message.sent"])
    off, _ = _endpoint(team, "https://hooks.example.com/c", enabled=False)
    other, _ = _endpoint(TeamFactory(), "https://hooks.example.com/d")

    class Boom(Exception):
        pass

    with pytest.raises(Boom), transaction.atomic():
        event = _received(team)
        assert list(WebhookDelivery.objects.filter(event=event).values_list("endpoint_id", flat=True)) == [ep.pk]
        raise Boom
    assert not Event.objects.exists() and not WebhookDelivery.objects.exists()

    event = _received(team)
    # The bulk path (raw store, outbox): ids read back after the executemany INSERT.
    assert events_record([(team.pk, "message.sent", {"message": 8}), (team.pk, "message.received", {"message": 9})]) == 2
    rows = sorted(WebhookDelivery.objects.values_list("event__payload__message", "endpoint_id", "state", "attempts"))
    assert rows == [(7, ep.pk, "pending", 0), (8, ep.pk, "pending", 0), (8, only_sent.pk, "pending", 0),
                    (9, ep.pk, "pending", 0)]
    assert off.pk not in {r[1] for r in rows} and other.pk not in {r[1] for r in rows}
    # Idempotent: the hook run again for the same events writes nothing new.
    from mailroom.events.services import Recorded
    from mailroom.webhooks.services import RECORDING_HOOK

    RECORDING_HOOK.handle([Recorded(event.pk, team.pk, event.kind)])
    assert WebhookDelivery.objects.count() == 4


def test_signed_delivery_verifies_with_standardwebhooks(team: Any, receiver: Receiver) -> None:
    ep, secret = _endpoint(team, receiver.url)
    assert secret.startswith("whsec_")
    event = _received(team, thread=3)
    assert webhook_deliver_due() == 1
    (req,) = receiver.requests
    assert req.path == "/hook"
    assert req.headers["webhook-id"] == f"msg_{event.pk}_{ep.pk}"
    assert req.headers["content-type"] == "application/json"
    assert req.headers["webhook-signature"].startswith("v1,") and " " not in req.headers["webhook-signature"]
    parsed = Webhook(secret).verify(req.body, req.headers)
    assert parsed == {"type": "message.received",
                      "timestamp": event.created_at.isoformat().replace("+00:00", "Z"),
                      "data": {"message": 7, "thread": 3, "event_id": event.pk, "team_id": team.pk}}
    assert req.body == json.dumps(parsed, separators=(",", ":"), sort_keys=True).encode()  # the bytes as signed
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(req.body + b" ", req.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + "A" * 32).verify(req.body, req.headers)
    d = WebhookDelivery.objects.get()
    assert (d.state, d.attempts, d.last_status) == ("delivered", 1, 200)
    (a,) = WebhookAttempt.objects.all()
    assert (a.status_code, a.success, a.response_excerpt, a.error) == (200, True, "answer 1", "")
    assert a.webhook_timestamp == int(req.headers["webhook-timestamp"])
    assert webhook_deliver_due() == 0 and len(receiver.requests) == 1


def test_500_then_refused_then_back_keeps_the_id_and_re_signs(team: Any, make_receiver: Any) -> None:
    receiver = make_receiver(answers=[500, 200])
    ep, secret = _endpoint(team, receiver.url)
    event = _received(team)
    assert webhook_deliver_due() == 1  # 500
    d = WebhookDelivery.objects.get()
    assert (d.state, d.attempts, d.last_status, d.last_error) == ("pending", 1, 500, "HTTP 500")
    port = receiver.port
    receiver.stop()  # now the port refuses connections
    time.sleep(1.05)  # so that the next attempt's timestamp differs (whole seconds)
    assert webhook_deliver_due() == 1
    d.refresh_from_db()
    assert (d.state, d.attempts, d.last_status) == ("pending", 2, None)
    assert "ConnectionRefused" in d.last_error
    time.sleep(1.05)
    receiver.start(port)  # back, on the same port: answers 200 (its second answer)
    assert webhook_deliver_due() == 1
    d.refresh_from_db()
    assert (d.state, d.attempts, d.last_status) == ("delivered", 3, 200)
    reqs = receiver.requests
    assert len(reqs) == 2
    assert {r.headers["webhook-id"] for r in reqs} == {f"msg_{event.pk}_{ep.pk}"}
    assert reqs[0].body == reqs[1].body
    assert int(reqs[1].headers["webhook-timestamp"]) >= int(reqs[0].headers["webhook-timestamp"]) + 2
    assert reqs[0].headers["webhook-signature"] != reqs[1].headers["webhook-signature"]
    for r in reqs:
        Webhook(secret).verify(r.body, r.headers)
    log = list(WebhookAttempt.objects.order_by("id").values_list("status_code", "success", "webhook_timestamp"))
    assert [(s, ok) for s, ok, _ in log] == [(500, False), (None, False), (200, True)]
    assert log[0][2] < log[1][2] < log[2][2]
    assert log[0][2] == int(reqs[0].headers["webhook-timestamp"]) and log[2][2] == int(reqs[1].headers["webhook-timestamp"])


def test_schedule_exhausted_fails_and_waits_between_attempts(team: Any, settings: Any, make_receiver: Any) -> None:
    settings.MAILROOM_WEBHOOK_RETRY_SCHEDULE = [0, 3600]
    receiver = make_receiver(answers=[503])
    _endpoint(team, receiver.url)
    _received(team)
    assert webhook_deliver_due() == 1
    d = WebhookDelivery.objects.get()
    # 3600 s jittered by at most a fifth
    assert timedelta(seconds=2880 - 5) <= d.next_attempt_at - timezone.now() <= timedelta(seconds=4320)
    assert webhook_deliver_due() == 0  # not due yet
    WebhookDelivery.objects.update(next_attempt_at=timezone.now())
    assert webhook_deliver_due() == 1
    d.refresh_from_db()
    assert (d.state, d.attempts, d.next_attempt_at) == ("failed", 2, None)
    assert d.failed_at is not None and len(receiver.requests) == 2
    assert webhook_deliver_due() == 0


def test_endpoint_failing_too_long_is_disabled_and_admins_told(team: Any, settings: Any, make_receiver: Any) -> None:
    settings.MAILROOM_WEBHOOK_DISABLE_AFTER = 3600
    receiver = make_receiver(answers=[500])
    ep, _ = _endpoint(team, receiver.url)
    watcher, _ = _endpoint(team, "https://hooks.example.com/w", event_types=["webhook.endpoint_disabled"])
    _received(team)
    _received(team)
    assert webhook_deliver_due() == 1  # the first fails; the round stops (one attempt per failing endpoint)
    ep.refresh_from_db()
    assert ep.enabled and ep.failing_since is not None
    WebhookEndpoint.objects.filter(pk=ep.pk).update(failing_since=timezone.now() - timedelta(seconds=3601))
    assert webhook_deliver_due() == 1
    ep.refresh_from_db()
    assert not ep.enabled and ep.disabled_reason.startswith("failing since ")
    note = Event.objects.get(kind="webhook.endpoint_disabled")
    assert note.team_id == team.pk and note.payload["endpoint_id"] == ep.pk and note.payload["url"] == receiver.url
    assert WebhookDelivery.objects.filter(event=note, endpoint=watcher).exists()
    assert not WebhookDelivery.objects.filter(event=note, endpoint=ep).exists()
    WebhookDelivery.objects.filter(endpoint=ep).update(next_attempt_at=timezone.now())
    assert webhook_claim_endpoints(worker_id="w", limit=10) == [watcher.pk]  # the disabled one: not delivered to
    assert len(receiver.requests) == 2


def test_rotation_overlap_sends_both_signatures(team: Any, settings: Any, receiver: Receiver) -> None:
    ep, old = _endpoint(team, receiver.url)
    rotated = webhook_secret_rotate(endpoint=ep, overlap_seconds=600)
    new = rotated.secret
    assert new != old and new.startswith("whsec_")
    _received(team)
    webhook_deliver_due()
    (req,) = receiver.requests
    sigs = req.headers["webhook-signature"].split(" ")
    assert len(sigs) == 2 and all(s.startswith("v1,") for s in sigs)
    Webhook(new).verify(req.body, req.headers)
    Webhook(old).verify(req.body, req.headers)
    # The overlap over: the new secret alone.
    WebhookEndpoint.objects.filter(pk=ep.pk).update(previous_secret_expires_at=timezone.now() - timedelta(seconds=1))
    _received(team)
    webhook_deliver_due()
    req2 = receiver.requests[1]
    assert " " not in req2.headers["webhook-signature"]
    Webhook(new).verify(req2.body, req2.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(old).verify(req2.body, req2.headers)


def test_replay_one_and_since(team: Any, receiver: Receiver) -> None:
    from mailroom.webhooks.services import webhook_delivery_replay

    ep, secret = _endpoint(team, receiver.url, enabled=False)
    before = _received(team)  # while disabled: no delivery row
    assert not WebhookDelivery.objects.exists()
    WebhookEndpoint.objects.filter(pk=ep.pk).update(enabled=True)
    ep.refresh_from_db()
    _received(team)
    assert webhook_deliver_due() == 1
    assert webhook_replay_since(endpoint=ep, since=before.created_at) == 2
    assert webhook_deliver_due() == 2
    ids = [r.headers["webhook-id"] for r in receiver.requests]
    assert ids[1:] == [f"msg_{before.pk}_{ep.pk}", ids[0]]
    d = WebhookDelivery.objects.get(event=before)
    webhook_delivery_replay(delivery=d)
    assert webhook_deliver_due() == 1
    assert receiver.requests[-1].headers["webhook-id"] == f"msg_{before.pk}_{ep.pk}"
    Webhook(secret).verify(receiver.requests[-1].body, receiver.requests[-1].headers)
    assert WebhookAttempt.objects.filter(delivery=d).count() == 2


def test_lease_keeps_other_workers_off_until_it_expires(team: Any, settings: Any, receiver: Receiver) -> None:
    ep, _ = _endpoint(team, receiver.url)
    _received(team)
    assert webhook_claim_endpoints(worker_id="a", limit=5) == [ep.pk]
    assert webhook_claim_endpoints(worker_id="b", limit=5) == []  # a holds it (a killed a, too, until expiry)
    assert webhook_deliver_due(worker_id="b") == 0 and not receiver.requests
    WebhookEndpoint.objects.filter(pk=ep.pk).update(lease_until=timezone.now() - timedelta(seconds=1))
    assert webhook_deliver_due(worker_id="b") == 1  # expired: re-driven by b
    assert len(receiver.requests) == 1
    assert WebhookDelivery.objects.get().state == "delivered"
