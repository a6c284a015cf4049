"""The pipeline's process beside an import never outlives its parent, even one killed while it held
a lock the two share."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.dburl import subprocess_env
from tests.procs import wait_session_gone

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]

PARENT = """
import multiprocessing, os, signal, sys, time
from pathlib import Path

if __name__ == "__main__":
    import django

    django.setup()
    from django.conf import settings

    from mailroom.conversations.background import pipeline_process

    ctx = multiprocessing.get_context("spawn")
    stop, wake, handed, results = ctx.Event(), ctx.Event(), ctx.Event(), ctx.SimpleQueue()
    overrides = {n: getattr(settings, n) for n in dir(settings) if n.startswith("MAILROOM_")}
    child = ctx.Process(target=pipeline_process, args=(overrides, stop, wake, handed, results, os.getpid()))
    child.start()
    print(child.pid, flush=True)
    # Killed in the middle of wake.set() (which this process calls on every commit of an import):
    # the lock of the Event stays taken. Wait until the child's sweep is blocked on it.
    wake._cond.acquire()
    deadline = time.monotonic() + 120
    while Path(f"/proc/{child.pid}/wchan").read_text() != "futex_do_wait" and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_the_pipeline_process_exits_when_its_parent_is_killed_holding_its_wake_lock(tmp_path: Path) -> None:
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    env = {**os.environ, **subprocess_env(), "MAILROOM_DATA_DIR": str(tmp_path), "MAILROOM_PARSE_PROCESSES": "1",
           "MAILROOM_ENCRYPTION_KEYS": "test1:" + "A" * 43, "DJANGO_SETTINGS_MODULE": "mailroom.config.settings"}
    # Not communicate(): a child left behind holds the pipes open.
    with open(tmp_path / "stderr", "w") as err:
        proc = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE, stderr=err, text=True,
                                start_new_session=True)
    try:
        child = int(proc.stdout.readline())  # type: ignore[union-attr]
        assert proc.wait(180) == -signal.SIGKILL, (tmp_path / "stderr").read_text()
        left = wait_session_gone(proc.pid, 15)
        assert left == {}, f"the pipeline process ({child}) outlived its killed parent: {left}"
    finally:
        wait_session_gone(proc.pid, 0)  # nothing of it survives a failure either
        proc.stdout.close()  # type: ignore[union-attr]
