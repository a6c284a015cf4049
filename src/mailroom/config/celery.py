"""Celery for distributed workers (``MAILROOM_TASKS=celery``). The database stays the source of
truth: a task only says "there is work"; it loads state and is idempotent, acked late, so a worker
that dies mid-task leaves the task to be redelivered. The sync engine's sweeper re-sends a wake-up
while work is pending, so a lost message on the broker delays work but never loses it."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mailroom.config.settings")

app = Celery("mailroom")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["mailroom.conversations"])
