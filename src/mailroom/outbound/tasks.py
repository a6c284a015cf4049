"""The outbox worker: sends due messages, files them into Sent, forwards relayed replies, applies
bounces.

Thin and idempotent: every step claims its own rows (leases) and may run twice safely. The lead
starts :func:`run_outbox_worker` from ``mailroom serve``; ``mailroom outbox send-due`` runs one round.
"""

from __future__ import annotations

import logging
import threading
import time

from django.db import close_old_connections

from mailroom.outbound.services import (
    batch_size,
    connections,
    new_worker_id,
    outbox_append_due,
    outbox_send_due,
    outbox_wakeup,
)

log = logging.getLogger(__name__)

BOUNCE_SWEEP_SECONDS = 60.0


def outbox_round(*, worker_id: str, limit: int | None = None, parallel: int | None = None,
                 sweep_bounces: bool = True) -> int:
    """One round of work. Returns how many things were done (0: idle)."""
    from mailroom.outbound.bounces import outbox_bounces_sweep
    from mailroom.outbound.relay import relay_forward_due

    limit = limit or batch_size()
    report = outbox_send_due(limit=limit, parallel=parallel or connections(), worker_id=worker_id)
    appended = outbox_append_due(limit=limit)
    forwarded = relay_forward_due(limit=limit)
    bounced = outbox_bounces_sweep() if sweep_bounces else 0
    return report.claimed + appended + forwarded + bounced


def run_outbox_worker(stop_event: threading.Event, *, interval: float = 2.0, limit: int | None = None,
                      parallel: int | None = None) -> None:
    """Loop until ``stop_event`` is set; wakes early when a new message is committed."""
    worker_id = new_worker_id()
    log.info("outbox.worker_started", extra={"worker": worker_id})
    last_sweep = 0.0
    while not stop_event.is_set():
        busy = 0
        try:
            close_old_connections()
            sweep = time.monotonic() - last_sweep >= BOUNCE_SWEEP_SECONDS
            busy = outbox_round(worker_id=worker_id, limit=limit, parallel=parallel, sweep_bounces=sweep)
            if sweep:
                last_sweep = time.monotonic()
        except Exception:  # one bad round must not kill the worker; rows stay leased and recover
            log.exception("outbox.round_failed")
        finally:
            close_old_connections()
        if busy:
            continue
        outbox_wakeup.wait(interval)
        outbox_wakeup.clear()
    log.info("outbox.worker_stopped", extra={"worker": worker_id})
