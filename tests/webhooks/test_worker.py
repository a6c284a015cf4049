"""The delivery worker thread (as ``mailroom serve`` runs it): woken by the commit that writes
deliveries, one thread per endpoint, so a slow endpoint does not hold up another."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from django.db import transaction

from mailroom.events.models import Event
from mailroom.events.services import event_record
from mailroom.webhooks.models import WebhookDelivery
from mailroom.webhooks.services import webhook_endpoint_create
from mailroom.webhooks.tasks import run_webhook_worker

pytestmark = pytest.mark.django_db(transaction=True)


def _wait(cond: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return False


def test_slow_endpoint_does_not_delay_another(team: Any, make_receiver: Any) -> None:
    slow = make_receiver(delay=2.5)
    fast = make_receiver()
    webhook_endpoint_create(team_id=team.pk, url=slow.url)
    webhook_endpoint_create(team_id=team.pk, url=fast.url)
    stop = threading.Event()
    worker = threading.Thread(target=run_webhook_worker, args=(stop,), kwargs={"interval": 5.0, "concurrency": 4})
    worker.start()
    try:
        time.sleep(0.3)  # the worker is idle, waiting for a wake-up (interval 5 s)
        started = time.monotonic()
        with transaction.atomic():
            event_record(team_id=team.pk, kind=Event.Kind.MESSAGE_RECEIVED, payload={"message": 1})
        assert _wait(lambda: len(fast.requests) == 1 and len(slow.requests) == 1, 2.0)
        with transaction.atomic():
            event_record(team_id=team.pk, kind=Event.Kind.MESSAGE_RECEIVED, payload={"message": 2})
        # The fast endpoint gets the second event while the slow one still answers the first.
        assert _wait(lambda: len(fast.requests) == 2, 1.5)
        assert time.monotonic() - started < 2.5 and len(slow.requests) == 1
        assert _wait(lambda: WebhookDelivery.objects.filter(state="delivered").count() == 4, 8.0)
        assert len(slow.requests) == 2
    finally:
        stop.set()
        worker.join(15)
    assert not worker.is_alive()
