"""The webhook delivery worker: a thread beside the sync engine and the outbox (``mailroom serve``
on the embedded default, ``mailroom worker`` with ``MAILROOM_TASKS=celery``; ``core/cli.Background``).

It leases endpoints that have due deliveries and delivers each endpoint's in a small thread pool, one
endpoint per thread (``MAILROOM_WEBHOOK_CONCURRENCY``): one delivery at a time per endpoint, and a
slow or dead endpoint holds one thread, never the others nor the mail pipeline. A commit that writes
deliveries wakes it; every ``interval`` it looks again anyway (the sweeper: deliveries of an
endpoint whose worker died are due again once its lease expires)."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait

from django.conf import settings
from django.db import close_old_connections, connection

from mailroom.webhooks.services import (
    new_worker_id,
    webhook_claim_endpoints,
    webhook_deliver_endpoint,
    webhook_wakeup,
)

log = logging.getLogger(__name__)


def _deliver(endpoint_id: int, worker_id: str) -> int:
    try:
        return webhook_deliver_endpoint(endpoint_id=endpoint_id, worker_id=worker_id)
    except Exception:  # the lease expires and another round retries; the worker goes on
        log.exception("webhooks.endpoint_round_failed", extra={"endpoint": endpoint_id})
        return 0
    finally:
        # A pool thread's connection would outlive the pool otherwise (threads keep their own).
        connection.close()


def run_webhook_worker(stop_event: threading.Event, *, interval: float = 1.0, concurrency: int | None = None) -> None:
    """Loop until ``stop_event`` is set."""
    size = concurrency or settings.MAILROOM_WEBHOOK_CONCURRENCY
    worker_id = new_worker_id()
    log.info("webhooks.worker_started", extra={"worker": worker_id, "threads": size})
    running: dict[int, Future[int]] = {}
    with ThreadPoolExecutor(max_workers=size, thread_name_prefix="webhook") as pool:
        while not stop_event.is_set():
            webhook_wakeup.clear()  # before the claim: a wake-up during it is not lost
            for ep_id in [k for k, f in running.items() if f.done()]:
                del running[ep_id]
            try:
                close_old_connections()
                for ep_id in webhook_claim_endpoints(worker_id=worker_id, limit=size - len(running),
                                                     exclude=list(running)):
                    fut = running[ep_id] = pool.submit(_deliver, ep_id, worker_id)
                    fut.add_done_callback(lambda _f: webhook_wakeup.set())  # its endpoint may have more due
            except Exception:
                log.exception("webhooks.claim_failed")
            finally:
                close_old_connections()
            deadline = time.monotonic() + interval
            while not stop_event.is_set() and not webhook_wakeup.wait(min(0.25, max(0.0, deadline - time.monotonic()))):
                if time.monotonic() >= deadline:
                    break
        wait(list(running.values()))
    connection.close()
    log.info("webhooks.worker_stopped", extra={"worker": worker_id})
