"""The pipeline on real brokers (Redis and RabbitMQ) with a real Celery worker process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from mailroom.conversations.models import Message
from mailroom.conversations.tasks import pipeline_run
from mailroom.ingest.rawstore import IncomingRaw, store_batch
from tests.dburl import subprocess_env
from tests.ingest.helpers import make_mail

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]


@pytest.mark.parametrize("broker", ["redis://127.0.0.1:6379/15", "amqp://guest:guest@127.0.0.1:5672//"])
def test_worker_processes_pipeline_from_broker(team: Any, tmp_path: Path, broker: str) -> None:
    store_batch(team_id=team.pk, kind="lmtp", items=[IncomingRaw(raw=make_mail(i), key=f"c{i}") for i in range(20)])
    env = {
        **os.environ, **subprocess_env(), "MAILROOM_DATA_DIR": str(tmp_path),
        "MAILROOM_ENCRYPTION_KEYS": "test1:" + "A" * 43, "MAILROOM_TASKS": "celery", "CELERY_BROKER_URL": broker,
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "mailroom.cli", "worker", "--concurrency", "2"],  # the default pool: threads
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        # What send_wake() does, through a client bound to this broker (the app's producer pool is
        # bound to the configured one).
        client = Celery(broker=broker)
        client.send_task(pipeline_run.name, ignore_result=True)
        client.close()
        deadline = time.monotonic() + 60
        while Message.objects.filter(state="linked").count() < 20:
            assert worker.poll() is None, worker.stdout.read() if worker.stdout else ""
            if time.monotonic() > deadline:
                worker.terminate()
                out = worker.communicate(timeout=20)[0]
                raise AssertionError(f"the worker did not process the pipeline:\n{out[-3000:]}")
            time.sleep(0.2)
    finally:
        worker.terminate()
        worker.wait(20)
    assert Message.objects.filter(state="linked").count() == 20
    assert Message.objects.exclude(thread=None).count() == 20
