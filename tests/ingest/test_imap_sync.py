"""IMAP sync against the real Dovecot: exactly once, resumable, UIDVALIDITY-safe, never sets flags."""

from __future__ import annotations

from typing import Any

import pytest

from mailroom.conversations.models import Message, Source
from mailroom.ingest.imap import worker
from mailroom.ingest.imap.worker import mailbox_sync_once
from mailroom.mailboxes.models import Folder, Mailbox
from tests.factories import TeamFactory
from tests.ingest.helpers import mailbox_for, make_mail

pytestmark = pytest.mark.django_db(transaction=True)


def _folder(mb: Mailbox, role: str) -> Folder:
    return Folder.objects.get(mailbox=mb, role=role)


def test_sync_inbox_and_sent_exactly_once(mail_user: Any) -> None:
    user = mail_user()
    user.dovecot.deliver_many(user.email, [make_mail(i) for i in range(30)])
    user.dovecot.deliver_many(user.email, [make_mail(100 + i, sender=user.email, to="c@client.test") for i in range(7)], "Sent")
    mb = mailbox_for(user)

    results = mailbox_sync_once(mb)

    assert {k: v.stored for k, v in results.items()} == {"INBOX": 30, "Sent": 7}
    assert Message.objects.filter(team=mb.team).count() == 37
    assert Source.objects.filter(mailbox=mb).count() == 37
    inbox, sent = _folder(mb, "inbox"), _folder(mb, "sent")
    assert (inbox.stored_count, inbox.server_count) == (30, 30)
    assert (sent.stored_count, sent.server_count) == (7, 7)
    assert inbox.backfill_done and sent.backfill_done
    assert Message.objects.filter(direction="outgoing").count() == 7
    # Every Dovecot UID is a source, once.
    assert sorted(Source.objects.filter(folder=inbox).values_list("uid", flat=True)) == user.dovecot.list_uids(user.email)

    # A second run finds nothing new; new mail is picked up incrementally.
    assert {k: v.stored for k, v in mailbox_sync_once(mb).items()} == {"INBOX": 0, "Sent": 0}
    user.dovecot.deliver(user.email, make_mail(500))
    assert mailbox_sync_once(mb)["INBOX"].stored == 1
    assert Message.objects.count() == 38


def test_raw_bytes_are_stored_exactly(mail_user: Any) -> None:
    user = mail_user()
    raw = make_mail(1, body="Тело письма\n" * 3).replace(b"\n", b"\r\n")  # as IMAP serves it
    user.dovecot.deliver(user.email, raw)
    mb = mailbox_for(user)
    mailbox_sync_once(mb)
    assert Message.objects.get().raw.read() == raw


def test_sync_never_changes_flags(mail_user: Any) -> None:
    user = mail_user()
    user.dovecot.deliver_many(user.email, [make_mail(i) for i in range(3)])
    mailbox_sync_once(mailbox_for(user))
    conn = user.imap()
    conn.select("INBOX", readonly=True)
    typ, data = conn.uid("FETCH", "1:*", "(FLAGS)")
    conn.logout()
    assert typ == "OK"
    assert all(b"\\Seen" not in line for line in data if isinstance(line, bytes))


def test_newest_first_backfill_resumes_after_crash(mail_user: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    user = mail_user()
    user.dovecot.deliver_many(user.email, [make_mail(i) for i in range(25)])
    mb = mailbox_for(user, sync_roles=["inbox"])
    monkeypatch.setattr(worker, "MAX_BATCH_COUNT", 4)
    real_store = worker._store
    calls = {"n": 0}

    def crashing_store(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            raise ConnectionResetError("connection dropped mid-batch")
        return real_store(*args, **kwargs)

    monkeypatch.setattr(worker, "_store", crashing_store)
    with pytest.raises(ConnectionResetError):
        mailbox_sync_once(mb)
    mb.refresh_from_db()
    assert mb.health == Mailbox.Health.ERROR
    assert "connection dropped" in mb.last_error
    # Two batches of four were committed, newest first.
    uids = user.dovecot.list_uids(user.email)
    stored = sorted(Source.objects.filter(mailbox=mb).values_list("uid", flat=True))
    assert stored == uids[-8:]

    monkeypatch.setattr(worker, "_store", real_store)
    mailbox_sync_once(mb)
    assert sorted(Source.objects.filter(mailbox=mb).values_list("uid", flat=True)) == uids
    assert Message.objects.count() == 25
    mb.refresh_from_db()
    assert mb.health == Mailbox.Health.OK and mb.last_error == ""


def test_uidvalidity_reset_no_duplicates_no_losses(mail_user: Any) -> None:
    user = mail_user()
    user.dovecot.deliver_many(user.email, [make_mail(i) for i in range(12)])
    mb = mailbox_for(user, sync_roles=["inbox"])
    mailbox_sync_once(mb)
    old = _folder(mb, "inbox").uidvalidity

    new_validity = user.dovecot.reset_uidvalidity(user.email, "INBOX")
    user.dovecot.deliver(user.email, make_mail(99))
    results = mailbox_sync_once(mb)

    inbox = _folder(mb, "inbox")
    assert results["INBOX"].reset is True
    assert inbox.uidvalidity == new_validity != old
    assert Message.objects.count() == 13  # 12 known + 1 new: nothing doubled, nothing lost
    assert (inbox.stored_count, inbox.server_count) == (13, 13)
    assert Source.objects.filter(folder=inbox, uidvalidity=new_validity).count() == 13


def test_same_message_in_two_mailboxes_is_one_message(mail_user: Any) -> None:
    team = TeamFactory()
    alice, bob = mail_user(), mail_user()
    raw = make_mail(1, to=f"{alice.email}, {bob.email}")
    alice.dovecot.deliver(alice.email, raw)
    bob.dovecot.deliver(bob.email, raw)
    mb_a = mailbox_for(alice, team=team)
    mb_b = mailbox_for(bob, team=team)
    mailbox_sync_once(mb_a)
    mailbox_sync_once(mb_b)
    msg = Message.objects.get()
    assert sorted(msg.sources.values_list("mailbox_id", flat=True)) == sorted([mb_a.pk, mb_b.pk])


def test_message_without_message_id_or_headers_is_still_stored(mail_user: Any) -> None:
    user = mail_user()
    garbage = b"this is not an email at all \xff\xfe\x00 just bytes\r\n"
    user.dovecot.deliver(user.email, garbage)
    user.dovecot.deliver(user.email, make_mail(1))
    mb = mailbox_for(user, sync_roles=["inbox"])
    mailbox_sync_once(mb)
    assert Message.objects.count() == 2
    synth = Message.objects.get(message_id_synthesised=True)
    assert synth.message_id.startswith("mr-synth-") and b"not an email" in synth.raw.read()


def test_raw_8bit_message_ids_are_stored_and_threaded_and_the_mailbox_flows(mail_user: Any) -> None:
    from mailroom.conversations import pipeline

    user = mail_user()

    def with_raw_ids(n: int, message_id: bytes, in_reply_to: bytes = b"") -> bytes:
        # Raw 8-bit bytes in the id headers, as some mail software writes them (no encoding).
        head, body = make_mail(n).split(b"\n\n", 1)
        lines = [ln for ln in head.split(b"\n") if not ln.lower().startswith(b"message-id:")]
        lines.append(b"Message-ID: <" + message_id + b">")
        if in_reply_to:
            lines.append(b"In-Reply-To: <" + in_reply_to + b">")
            # Her domain's signature checked at our MX (who may join a thread: tests/routing/test_rules.py).
            lines.append(b"Authentication-Results: mx.company.test; dkim=pass header.d=client.test; dmarc=pass")
        return b"\n".join(lines) + b"\n\n" + body

    cyrillic = "заказ-17@магазин.рф".encode()
    user.dovecot.deliver(user.email, with_raw_ids(1, cyrillic))
    user.dovecot.deliver(user.email, with_raw_ids(2, b"koi8-\xda\xc1\xcb\xc1\xda@shop.test"))
    user.dovecot.deliver(user.email, with_raw_ids(3, b"reply-1@client.test", in_reply_to=cyrillic))
    user.dovecot.deliver(user.email, make_mail(4, msgid="plain-4@client.test"))
    mb = mailbox_for(user, sync_roles=["inbox"])
    # Such an id once failed its whole batch, at every retry: the mailbox was stuck behind it.
    assert {k: v.stored for k, v in mailbox_sync_once(mb).items()} == {"INBOX": 4}
    pipeline.drain()
    ids = dict(Message.objects.values_list("message_id", "thread_id"))
    assert sorted(ids) == sorted([
        "заказ-17@магазин.рф", "koi8-\\xda\\xc1\\xcb\\xc1\\xda@shop.test", "reply-1@client.test", "plain-4@client.test",
    ])
    assert ids["reply-1@client.test"] == ids["заказ-17@магазин.рф"]
    assert set(Message.objects.values_list("state", flat=True)) == {"linked"}


def test_cyrillic_folder_names_and_roles(mail_user: Any) -> None:
    user = mail_user()
    user.dovecot.create_folder(user.email, "Проекты")
    user.dovecot.deliver(user.email, make_mail(1), "Проекты")
    mb = mailbox_for(user, sync_roles=["inbox", "sent"])
    mailbox_sync_once(mb)
    folder = Folder.objects.get(mailbox=mb, name="Проекты")
    assert folder.raw_name == "&BB8EQAQ+BDUEOgRCBEs-"
    assert folder.role == "other" and folder.selected is False
    assert Folder.objects.get(mailbox=mb, role="sent").name == "Sent"


@pytest.mark.parametrize(
    ("change", "kind", "fragment"),
    [
        ({"imap_port": 1}, "connect", "refused the connection: check the port (1)"),
        ({"imap_host": "no-such-host.invalid"}, "dns", "cannot resolve 'no-such-host.invalid'"),
        ({"imap_security": "ssl"}, "tls", "TLS handshake"),
        ({"password": "wrong"}, "auth", "was refused"),
    ],
)
def test_connection_errors_are_clear(mail_user: Any, change: dict[str, Any], kind: str, fragment: str) -> None:
    from mailroom.mailboxes.connect import ImapError

    user = mail_user()
    mb = mailbox_for(user)
    if "password" in change:
        mb.set_secret({"password": change["password"]})
    else:
        for k, v in change.items():
            setattr(mb, k, v)
    mb.save()
    with pytest.raises(ImapError) as err:
        mailbox_sync_once(mb)
    assert err.value.kind == kind
    assert fragment in err.value.message
    mb.refresh_from_db()
    assert mb.health == (Mailbox.Health.AUTH_FAILED if kind == "auth" else Mailbox.Health.ERROR)
    assert fragment in mb.last_error
    assert mb.next_attempt_at is not None


def test_new_mail_records_events_once(mail_user: Any) -> None:
    from mailroom.events.models import Event

    user = mail_user()
    user.dovecot.deliver_many(user.email, [make_mail(i) for i in range(3)])
    user.dovecot.deliver(user.email, make_mail(50, sender=user.email, to="c@client.test"), "Sent")
    mb = mailbox_for(user)
    mailbox_sync_once(mb)
    mailbox_sync_once(mb)
    events = list(Event.objects.order_by("id").values_list("kind", "payload"))
    assert sorted(k for k, _ in events) == ["message.received"] * 3 + ["message.sent"]
    assert {p["via"] for _, p in events} == {"imap", "mail client"}
    assert {p["message"] for _, p in events} == set(Message.objects.values_list("pk", flat=True))
    assert all(p["mailbox_id"] == mb.pk for _, p in events)


def test_a_runner_waits_in_idle_holding_no_database_connection(mail_user: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A runner per mailbox waits in IDLE most of its life: it holds no database connection meanwhile
    (one each made 200 IDLE mailboxes exhaust PostgreSQL's connections), and new mail still comes in."""
    import threading

    from django.db import connections

    from mailroom.ingest.imap.client import ImapSession

    held: list[bool] = []
    real = ImapSession.idle_wait

    def spying(self: ImapSession, *args: Any, **kwargs: Any) -> Any:
        held.append(connections["default"].connection is not None)  # the runner's own thread's
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ImapSession, "idle_wait", spying)
    user = mail_user()
    user.dovecot.deliver_many(user.email, [make_mail(i) for i in range(3)])
    mb = mailbox_for(user, sync_roles=["inbox"])
    stop = threading.Event()
    runner = worker.MailboxRunner(mb.pk, stop, idle_seconds=1.0)
    runner.start()
    try:
        _wait_for(lambda: Source.objects.count() == 3 and len(held) >= 2)
        user.dovecot.deliver_lmtp(user.email, [make_mail(3)])
        _wait_for(lambda: Source.objects.count() == 4)
        _wait_for(lambda: len(held) >= 4)
    finally:
        stop.set()
        runner.join(15)
    assert not runner.is_alive()
    assert held and not any(held), held


def _wait_for(predicate: Any, timeout: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met"
        time.sleep(0.05)


def test_an_engine_syncs_at_most_its_sync_concurrency_of_mailboxes_at_once(
    mail_user: Any, monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    """With MAILROOM_SYNC_CONCURRENCY=1 three mailboxes are synced one at a time (a runner holds a
    slot while it syncs, none in IDLE), and all three get their new mail."""
    import threading

    from mailroom.ingest.engine import SyncEngine

    settings.MAILROOM_SYNC_CONCURRENCY = 1
    inside, most = [0], [0]
    lock = threading.Lock()
    real = worker.sync_folder

    def counting(*args: Any, **kwargs: Any) -> Any:
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        try:
            return real(*args, **kwargs)
        finally:
            with lock:
                inside[0] -= 1

    monkeypatch.setattr(worker, "sync_folder", counting)
    users = [mail_user() for _ in range(3)]
    for i, user in enumerate(users):
        user.dovecot.deliver_many(user.email, [make_mail(10 * i + j) for j in range(20)])
        mailbox_for(user, sync_roles=["inbox"])
    engine = SyncEngine(reconcile_seconds=0.5, idle_seconds=1.0)
    engine.start()
    try:
        _wait_for(lambda: Source.objects.count() == 60)
        for i, user in enumerate(users):
            user.dovecot.deliver_lmtp(user.email, [make_mail(100 + i)])
        _wait_for(lambda: Source.objects.count() == 63)
    finally:
        engine.stop()
    assert most[0] == 1
    assert sorted(Mailbox.objects.values_list("health", flat=True)) == ["ok", "ok", "ok"]


@pytest.mark.parametrize("newest_first", [True, False])
def test_new_mail_of_a_synced_folder_is_live_a_backlog_or_a_large_catch_up_is_not(
    mail_user: Any, monkeypatch: pytest.MonkeyPatch, newest_first: bool
) -> None:
    """The pipeline's priority lane (Message.live) takes small fetches of new mail only."""
    user = mail_user()
    user.dovecot.deliver_many(user.email, [make_mail(i) for i in range(5)])
    mb = mailbox_for(user, sync_roles=["inbox"], newest_first=newest_first)
    mailbox_sync_once(mb)  # the first look: a backlog, whichever way it goes
    assert list(Message.objects.order_by("id").values_list("live", flat=True)) == [False] * 5
    user.dovecot.deliver(user.email, make_mail(10, msgid="new-10@client.test"))
    mailbox_sync_once(mb)  # one new message after IDLE or a poll
    monkeypatch.setattr(worker, "LIVE_FETCH_MAX", 2)
    user.dovecot.deliver_many(user.email, [make_mail(20 + i, msgid=f"new-{20 + i}@client.test") for i in range(3)])
    mailbox_sync_once(mb)  # three at once, above LIVE_FETCH_MAX: a catch-up
    assert list(Message.objects.filter(message_id__startswith="new-").order_by("id").values_list(
        "message_id", "live")) == [
        ("new-10@client.test", True), ("new-20@client.test", False), ("new-21@client.test", False),
        ("new-22@client.test", False),
    ]
