"""The running engine against real Dovecot: IDLE delivers new mail within seconds; kill -9 of the
sync at random moments, then restart, leaves every message stored exactly once; two ``mailroom
worker`` processes share the mailboxes and one takes over the other's when it is killed."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.db.models import Count

from mailroom.conversations.models import Message, Source
from mailroom.ingest.engine import SyncEngine
from mailroom.ingest.imap.worker import mailbox_sync_once
from mailroom.ingest.models import EngineNode
from mailroom.mailboxes.models import Folder, Mailbox
from tests.dburl import subprocess_env
from tests.ingest.helpers import mailbox_for, make_mail
from tests.procs import session_processes, wait_session_gone

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]


def _wait(predicate: Any, timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.02)
    raise AssertionError(f"condition not met within {timeout} s")


def test_idle_brings_new_mail_in_within_seconds(mail_user: Any) -> None:
    user = mail_user()
    user.dovecot.deliver(user.email, make_mail(0))
    mb = mailbox_for(user, sync_roles=["inbox"])
    engine = SyncEngine(reconcile_seconds=0.5)
    engine.start()
    try:
        _wait(lambda: Message.objects.count() == 1, 15)
        time.sleep(0.5)  # let the runner settle into IDLE
        latencies = []
        for i in range(1, 4):
            user.dovecot.deliver_lmtp(user.email, [make_mail(i)])
            latencies.append(_wait(lambda i=i: Message.objects.count() == i + 1, 10))
        print(f"IDLE delivery-to-database latencies: {[round(x, 3) for x in latencies]} s")
        mb.refresh_from_db()
        assert mb.health in ("ok", "syncing")
        assert mb.lease_owner == engine.owner
    finally:
        engine.stop()
    mb.refresh_from_db()
    assert mb.lease_owner == ""
    assert Source.objects.filter(mailbox=mb).count() == 4


def test_kill_minus_nine_during_import_then_restart_exactly_once(mail_user: Any, tmp_path: Path) -> None:
    user = mail_user()
    n = 1500
    user.dovecot.deliver_many(user.email, [make_mail(i, body="x" * random.randint(100, 20000)) for i in range(n)])
    user.dovecot.deliver_many(user.email, [make_mail(10_000 + i, sender=user.email) for i in range(200)], "Sent")
    mb = mailbox_for(user)
    env = {
        **os.environ,
        **subprocess_env(),
        "MAILROOM_DATA_DIR": str(tmp_path),
        "MAILROOM_ENCRYPTION_KEYS": "test1:" + "A" * 43,
    }
    cmd = [sys.executable, "-m", "mailroom.cli", "sync", "--once", "--no-progress", "--mailbox", str(mb.pk)]
    rnd = random.Random(42)
    kills = 0
    children: list[int] = []
    for _ in range(4):
        # Killed once a random number more of messages are stored, then a random moment later:
        # mid-import whatever this machine's speed (a random sleep alone let a fast machine finish).
        target = min(Source.objects.count() + rnd.randint(100, 350), n + 199)
        # A session of its own: what it started is still found by it after the kill.
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                start_new_session=True)
        deadline = time.monotonic() + 120
        while proc.poll() is None and Source.objects.count() < target and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rnd.uniform(0, 0.3))  # anywhere in the next batch, not just after a commit
        if proc.poll() is None:
            started = set(session_processes(proc.pid)) - {proc.pid}
            proc.send_signal(signal.SIGKILL)
            kills += 1
            children.append(len(started))
        proc.wait()
        # Its pipeline process and parse workers do not outlive it.
        assert wait_session_gone(proc.pid, 15) == {}
    assert kills == 4, "the import finished before it could be killed"
    assert max(children) >= 1, children  # it had started processes of its own: they were checked
    final = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr

    inbox = Folder.objects.get(mailbox=mb, role="inbox")
    sent = Folder.objects.get(mailbox=mb, role="sent")
    assert Message.objects.count() == n + 200
    assert Source.objects.filter(folder=inbox).count() == n
    assert Source.objects.filter(folder=sent).count() == 200
    assert (inbox.stored_count, inbox.server_count) == (n, n)
    assert sorted(Source.objects.filter(folder=inbox).values_list("uid", flat=True)) == user.dovecot.list_uids(user.email)
    # Nothing is left half-done: a last in-process pass finds nothing new.
    assert {k: v.stored for k, v in mailbox_sync_once(mb).items()} == {"INBOX": 0, "Sent": 0}


def test_idle_is_not_a_busy_loop(mail_user: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from mailroom.ingest.imap.client import ImapSession

    calls = {"examine": 0}
    real = ImapSession.examine

    def counting(self: ImapSession, name: str) -> Any:
        calls["examine"] += 1
        return real(self, name)

    monkeypatch.setattr(ImapSession, "examine", counting)
    user = mail_user()
    mailbox_for(user, sync_roles=["inbox"])
    engine = SyncEngine(reconcile_seconds=0.5, idle_seconds=2.0)
    engine.start()
    try:
        time.sleep(4.5)
    finally:
        engine.stop()
    # One pass to start, then one per 2-second IDLE slice: a handful, not hundreds.
    assert 1 <= calls["examine"] <= 5, calls


def test_pipeline_runs_in_a_process_of_its_own_restarted_if_killed(mail_user: Any, settings: Any) -> None:
    """`mailroom serve`'s engine parses and links in a process of its own (with its parse workers),
    not in threads competing with the web and the import; a pipeline process that dies is started
    again and nothing is lost; stop() leaves no process behind."""
    from mailroom.testing.servers import process_alive
    from tests.procs import descendants

    settings.MAILROOM_PARSE_PROCESSES = 1
    user = mail_user()
    user.dovecot.deliver_many(user.email, [make_mail(i) for i in range(3)])
    mailbox_for(user, sync_roles=["inbox"])
    engine = SyncEngine(reconcile_seconds=0.2)
    assert engine.own_process and engine.workers == []
    engine.start()
    try:
        _wait(lambda: Message.objects.filter(state=Message.State.LINKED).count() == 3, 30)
        first = engine._process
        assert first.pid != os.getpid() and first.is_alive()
        started = {first.pid, *descendants(first.pid)}
        assert len(started) >= 2  # its parse worker
        os.kill(first.pid, signal.SIGKILL)
        first.join(5)
        user.dovecot.deliver_lmtp(user.email, [make_mail(3)])
        _wait(lambda: Message.objects.filter(state=Message.State.LINKED).count() == 4, 30)
        assert engine._process is not first and engine._process.is_alive()
        started |= {engine._process.pid, *descendants(engine._process.pid)}
    finally:
        engine.stop()
    assert not engine._process.is_alive()
    # The killed process's parse worker went with it; the second process and its workers at stop().
    _wait(lambda: not any(process_alive(pid) for pid in started), 5)
    assert Message.objects.filter(state=Message.State.LINKED).count() == 4


def _stop_workers(workers: list[subprocess.Popen[bytes]]) -> list[int | None]:
    """SIGTERM (a Celery warm shutdown: the engine stops cleanly) and their exit codes; whatever of
    their sessions is left a minute later is killed, so that a failure leaves no engine behind to
    take the next test's mailboxes."""
    for proc in workers:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
    codes: list[int | None] = []
    for proc in workers:
        try:
            codes.append(proc.wait(60))
        except subprocess.TimeoutExpired:
            codes.append(None)
        wait_session_gone(proc.pid, 15)
    return codes


def _owned_by(pid: int) -> list[int]:
    """The mailboxes whose lease the engine of process ``pid`` holds (owner ids: host:pid:random)."""
    prefix = f"{socket.gethostname()}:{pid}:"
    return sorted(Mailbox.objects.filter(lease_owner__startswith=prefix).values_list("id", flat=True))


@pytest.mark.parametrize("failure", ["kill", "pause"])
def test_two_workers_share_the_mailboxes_and_one_takes_over_when_the_other_fails(
    mail_user: Any, tmp_path: Path, failure: str
) -> None:
    """``kill``: kill -9 mid-import; ``pause``: SIGSTOP mid-import (perhaps inside a commit, its rows
    locked) until the survivor has imported everything, then SIGCONT: its refused commits leave
    nothing, and it gets its share back by rebalancing."""
    if connection.vendor != "postgresql":
        pytest.skip("scale-out (several 'mailroom worker' processes writing at once) is PostgreSQL's: run with "
                    "DATABASE_URL=postgres://...")
    # Sent is synced before INBOX, each in one batch: a worker that has committed something and not
    # everything is between the two (the INBOX fetch), mid-import.
    folders, lease = {"Sent": 150, "INBOX": 250}, 10
    per_mailbox = sum(folders.values())
    rnd = random.Random(7)
    mailboxes, users = [], []
    for _ in range(6):
        user = mail_user()
        user.dovecot.deliver_many(
            user.email, [make_mail(10_000 + i, sender=user.email) for i in range(folders["Sent"])], "Sent"
        )
        user.dovecot.deliver_many(
            user.email, [make_mail(i, body="x" * rnd.randint(100, 20000)) for i in range(folders["INBOX"])]
        )
        users.append(user)
        # Enabled once both workers are up: each claims its share from the start, mid-import for both.
        mailboxes.append(mailbox_for(user, sync_roles=["inbox", "sent"], sync_enabled=False).pk)
    total = 6 * per_mailbox
    env = {
        **os.environ, **subprocess_env(), "MAILROOM_DATA_DIR": str(tmp_path),
        "MAILROOM_ENCRYPTION_KEYS": "test1:" + "A" * 43, "MAILROOM_TASKS": "celery",
        "CELERY_BROKER_URL": "redis://127.0.0.1:6379/7", "MAILROOM_LEASE_SECONDS": str(lease),
    }
    cmd = [sys.executable, "-m", "mailroom.cli", "worker", "--concurrency", "2"]
    workers = []
    for i in range(2):
        with (tmp_path / f"worker{i}.log").open("w") as out:
            workers.append(subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True))
    victim, survivor = workers
    try:
        _wait(lambda: EngineNode.objects.count() == 2, 60)
        Mailbox.objects.filter(pk__in=mailboxes).update(sync_enabled=True)
        lost: list[int] = []

        def importing() -> bool:
            """The victim holds its mailboxes (never more than its share) and has stored some."""
            lost[:] = _owned_by(victim.pid)
            assert len(lost) <= 3
            return Source.objects.filter(mailbox_id__in=lost).count() > 0

        _wait(importing, 60)
        victim.send_signal(signal.SIGSTOP)  # frozen: what it has stored stays what it is
        failed_at = time.monotonic()
        assert Source.objects.filter(mailbox_id__in=lost).count() < len(lost) * per_mailbox, "imported before"
        if failure == "kill":
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            assert wait_session_gone(victim.pid, 15) == {}  # its parse workers did not outlive it
        # The survivor's share grows to all six once the victim's heartbeat is a lease time old (a
        # session of the paused one left idle inside a commit is ended by the server by then).
        _wait(lambda: _owned_by(survivor.pid) == sorted(mailboxes), 3 * lease + 30)
        print(f"{failure}: the survivor held the failed worker's mailboxes "
              f"{time.monotonic() - failed_at:.1f} s after it failed (lease {lease} s)")
        _wait(lambda: Source.objects.count() == total, 300)
        if failure == "pause":
            victim.send_signal(signal.SIGCONT)  # wakes up to find its leases gone
        _wait(lambda: Message.objects.filter(state=Message.State.LINKED).count() == total, 300)
        assert survivor.poll() is None
        if failure == "pause":
            # Back in the registry, it gets its share again.
            _wait(lambda: len(_owned_by(victim.pid)) == 3 and len(_owned_by(survivor.pid)) == 3, 60)
    finally:
        codes = _stop_workers(workers)
    for i, proc in enumerate(workers):
        if failure == "pause" or proc is survivor:
            assert codes[i] == 0, (tmp_path / f"worker{i}.log").read_text()[-3000:]
    logs = "".join((tmp_path / f"worker{i}.log").read_text() for i in range(2))
    print(f"{failure}: {logs.count('ingest.lease_lost')} commits refused by the fence")

    # Every message exactly once, by Message-ID, each with its one source, and linked.
    assert Message.objects.count() == total
    assert list(Message.objects.values("message_id").annotate(n=Count("id")).filter(n__gt=1)) == []
    assert Source.objects.count() == total
    assert list(Source.objects.values("message__message_id").annotate(n=Count("id")).filter(n__gt=1)) == []
    assert Message.objects.exclude(state=Message.State.LINKED).count() == 0
    assert Message.objects.filter(thread=None).count() == 0
    for user, mid in zip(users, mailboxes, strict=True):
        for name, count in folders.items():
            folder = Folder.objects.get(mailbox_id=mid, name=name)
            assert (folder.stored_count, folder.server_count) == (count, count)
            uids = sorted(Source.objects.filter(folder=folder).values_list("uid", flat=True))
            assert uids == user.dovecot.list_uids(user.email, name)
    # A clean stop: its leases released, its registration gone.
    assert Mailbox.objects.exclude(lease_owner="").count() == 0
    assert EngineNode.objects.count() == 0


def test_idle_slices_do_not_resync_the_folders(mail_user: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """IDLE is renewed every slice, but the folders are synced again only every idle_seconds (or
    when the server announces mail): 200 mailboxes re-syncing after every 5-second slice were 40
    syncs a second with no mail, and new mail waited behind them."""
    from mailroom.ingest.imap import worker
    from mailroom.ingest.imap.client import ImapSession

    calls = {"examine": 0, "idle": 0}
    real_examine, real_idle = ImapSession.examine, ImapSession.idle_wait

    def examine(self: ImapSession, name: str) -> Any:
        calls["examine"] += 1
        return real_examine(self, name)

    def idle_wait(self: ImapSession, timeout: float) -> Any:
        calls["idle"] += 1
        return real_idle(self, timeout)

    monkeypatch.setattr(ImapSession, "examine", examine)
    monkeypatch.setattr(ImapSession, "idle_wait", idle_wait)
    monkeypatch.setattr(worker, "IDLE_SLICE_SECONDS", 0.5)
    user = mail_user()
    mailbox_for(user, sync_roles=["inbox"])
    engine = SyncEngine(reconcile_seconds=0.5, idle_seconds=30.0)
    engine.start()
    try:
        time.sleep(4.0)
        assert calls["idle"] >= 4  # renewed slice after slice
        assert calls["examine"] == 1  # the first pass only
        user.dovecot.deliver_lmtp(user.email, [make_mail(0)])
        _wait(lambda: Message.objects.count() == 1, 10)  # announced mail is still taken at once
    finally:
        engine.stop()
