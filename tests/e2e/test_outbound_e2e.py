"""Outbound against real Postfix (submission) and Dovecot (IMAP Sent, client INBOX)."""

from __future__ import annotations

import email
import os
import signal
import subprocess
import sys
import time
from email import policy
from typing import Any

import pytest
from django.utils import timezone
from tests.dburl import subprocess_env
from tests.factories import MailboxFactory, ThreadFactory
from tests.procs import wait_session_gone

from mailroom.conversations.models import Message, MessageRaw
from mailroom.ingest.rawstore import store_one
from mailroom.outbound.models import OutboxMessage
from mailroom.outbound.services import ComposeInput, outbox_append_due, outbox_create, outbox_send_due

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def _mailbox(team: Any, manager: Any, dovecot: Any, postfix: Any) -> Any:
    return MailboxFactory(
        team=team, email=manager.email, display_name="Acme Sales", imap_host=dovecot.host,
        imap_port=dovecot.imap_port, imap_username=manager.email, smtp_host=postfix.host,
        smtp_port=postfix.submission_port, smtp_username=manager.email, password=manager.password,
        provider_saves_sent=False,
    )


def _fetch_all(user: Any, folder: str = "INBOX") -> list[bytes]:
    conn = user.imap()
    try:
        conn.select(f'"{folder}"', readonly=True)
        _, data = conn.uid("SEARCH", "ALL")
        out = []
        for uid in (data[0] or b"").split():
            _, parts = conn.uid("FETCH", uid, "(BODY.PEEK[])")
            out.append(bytes(parts[0][1]))  # type: ignore[index]
        return out
    finally:
        conn.logout()


def _wait_count(user: Any, n: int, folder: str = "INBOX", timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while user.count(folder) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{user.email}/{folder}: {user.count(folder)} < {n}")
        time.sleep(0.1)


def test_reply_from_crm_reaches_client_with_threading_headers_and_one_sent_copy(
        team: Any, user: Any, dovecot: Any, postfix: Any, mail_user: Any) -> None:
    manager, client = mail_user("company.test"), mail_user("client.test")
    mailbox = _mailbox(team, manager, dovecot, postfix)
    incoming = (f"From: Client <{client.email}>\r\nTo: {manager.email}\r\nSubject: Price?\r\n"
                f"Date: Sat, 01 Mar 2025 10:00:00 +0000\r\nMessage-ID: <q1@client.test>\r\n\r\nHow much?\r\n").encode()
    pk, _ = store_one(team_id=team.pk, raw=incoming, kind="lmtp", key="lmtp:e2e:q1", mailbox=mailbox)
    parent = Message.objects.get(pk=pk)
    parent.thread = ThreadFactory(team=team)  # type: ignore[assignment]
    parent.save()

    row, _ = outbox_create(user=user, mailbox=mailbox, data=ComposeInput(mode="reply", in_reply_to=pk, text="100 EUR"))
    assert outbox_send_due().sent == 1
    _wait_count(client, 1)
    [got] = _fetch_all(client)
    msg = email.message_from_bytes(got, policy=policy.default)
    assert msg["Message-ID"] == f"<{row.message_id}>" and row.message_id.endswith("@company.test")
    assert msg["In-Reply-To"] == "<q1@client.test>" and msg["References"] == "<q1@client.test>"
    assert msg["Subject"] == "Re: Price?" and msg["Thread-Index"] and msg["From"].addresses[0].addr_spec == manager.email

    # Sent: exactly one copy, the very bytes we stored; a crash before recording never appends twice.
    assert outbox_append_due() == 1
    OutboxMessage.objects.filter(pk=row.pk).update(appended_to_sent_at=None)
    assert outbox_append_due() == 1
    sent = _fetch_all(manager, "Sent")
    assert len(sent) == 1
    row.refresh_from_db()
    assert sent[0] == MessageRaw.objects.get(message_id=row.stored_message_id or 0).read()


def test_5xx_rejection_fails_with_server_text(team: Any, user: Any, dovecot: Any, postfix: Any, mail_user: Any) -> None:
    manager, client = mail_user("company.test"), mail_user("client.test")
    mailbox = _mailbox(team, manager, dovecot, postfix)
    postfix.reject(client.email, 550, "5.1.1 Mailbox gone away (e2e)")
    try:
        row, _ = outbox_create(user=user, mailbox=mailbox, data=ComposeInput(to=(client.email,), text="x"))
        outbox_send_due()
    finally:
        postfix.unreject(client.email)
    row.refresh_from_db()
    assert row.state == "failed" and row.last_smtp_code == 550 and "Mailbox gone away" in row.last_smtp_text


def test_server_down_messages_wait_and_go_when_it_returns(team: Any, user: Any, dovecot: Any, postfix: Any,
                                                          mail_user: Any) -> None:
    manager, client = mail_user("company.test"), mail_user("client.test")
    mailbox = _mailbox(team, manager, dovecot, postfix)
    postfix.stop()
    try:
        rows = [outbox_create(user=user, mailbox=mailbox, data=ComposeInput(to=(client.email,), text=f"m{i}"))[0]
                for i in range(3)]
        outbox_send_due()
        assert set(OutboxMessage.objects.filter(pk__in=[r.pk for r in rows]).values_list("state", flat=True)) == {"retrying"}
    finally:
        postfix.start()
    mailbox.smtp_port = postfix.submission_port  # the test instance comes back on a new port
    mailbox.save()
    OutboxMessage.objects.filter(pk__in=[r.pk for r in rows]).update(next_attempt_at=timezone.now())
    assert outbox_send_due().sent == 3
    _wait_count(client, 3)
    ids = {email.message_from_bytes(m, policy=policy.default)["Message-ID"] for m in _fetch_all(client)}
    assert ids == {f"<{r.message_id}>" for r in rows}


def test_kill_9_during_a_batch_of_200(team: Any, user: Any, dovecot: Any, postfix: Any, mail_user: Any,
                                      settings: Any) -> None:
    manager, client = mail_user("company.test"), mail_user("client.test")
    mailbox = _mailbox(team, manager, dovecot, postfix)
    rows = [outbox_create(user=user, mailbox=mailbox, data=ComposeInput(to=(client.email,), subject=f"n{i}",
                                                                         text="x" * 2000))[0] for i in range(200)]
    env = {**os.environ, **subprocess_env(),
           "MAILROOM_ENCRYPTION_KEYS": settings.MAILROOM_ENCRYPTION_KEYS, "MAILROOM_OUTBOX_LEASE_SECONDS": "600"}
    cmd = [sys.executable, "-m", "mailroom.cli", "outbox", "send-due", "--loop", "--limit", "20"]
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)  # a session of its own: see tests/procs.py
    deadline = time.monotonic() + 60
    while OutboxMessage.objects.filter(state="sent").count() < 40:
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert wait_session_gone(proc.pid, 15) == {}  # nothing it started outlives it
    assert OutboxMessage.objects.exclude(state="sent").exists()  # killed mid-batch
    proc2 = subprocess.Popen(cmd, env=env)  # the dead worker's leases are recovered at once (same host, dead pid)
    try:
        deadline = time.monotonic() + 120
        while OutboxMessage.objects.filter(state="sent", appended_to_sent_at__isnull=False).count() < 200:
            assert time.monotonic() < deadline and proc2.poll() is None
            time.sleep(0.1)
    finally:
        proc2.send_signal(signal.SIGTERM)
        proc2.wait(30)
    expected = {f"<{r.message_id}>" for r in rows}
    _wait_count(client, 200, timeout=60)
    delivered = [email.message_from_bytes(m, policy=policy.default)["Message-ID"] for m in _fetch_all(client)]
    assert set(delivered) == expected  # every message delivered, only with its one Message-ID
    sent_ids = [email.message_from_bytes(m, policy=policy.default)["Message-ID"] for m in _fetch_all(manager, "Sent")]
    assert sorted(sent_ids) == sorted(expected)  # exactly one copy of each in Sent

