"""Celery tasks: thin and idempotent; they take no state, load it from the database."""

from __future__ import annotations

from celery import shared_task
from django.db import close_old_connections


@shared_task(name="mailroom.pipeline.run", acks_late=True, ignore_result=True)
def pipeline_run() -> int:
    """Parse and link whatever is pending (every worker may run it at once: rows are claimed)."""
    from mailroom.conversations import pipeline

    close_old_connections()
    try:
        return pipeline.drain()
    finally:
        close_old_connections()


def send_wake() -> None:
    pipeline_run.apply_async(ignore_result=True)
