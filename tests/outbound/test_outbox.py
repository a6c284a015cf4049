"""Outbox services against a real SMTP server on loopback (aiosmtpd)."""

from __future__ import annotations

import email
from datetime import timedelta
from email import policy
from typing import Any

import pytest
from django.utils import timezone

from mailroom.conversations.models import Message, MessageRaw, Source
from mailroom.core.errors import Conflict, InvalidInput
from mailroom.core.tokens import parse_own_message_id
from mailroom.events.models import Event
from mailroom.ingest.rawstore import store_one
from mailroom.outbound.models import OutboxMessage, Signature, Template
from mailroom.outbound.services import (
    ComposeInput,
    outbox_cancel,
    outbox_claim_due,
    outbox_create,
    outbox_retry,
    outbox_send_due,
)
from tests.factories import ContactEmailFactory, ContactFactory, DealFactory, ThreadFactory

pytestmark = pytest.mark.django_db

PARENT = (
    b"From: Client Person <client@client.test>\r\n"
    b"To: Acme Sales <manager@company.test>, colleague@company.test\r\n"
    b"Cc: boss@client.test, manager@company.test\r\n"
    b"Subject: Price request\r\n"
    b"Date: Sat, 01 Mar 2025 10:00:00 +0000\r\n"
    b"Message-ID: <parent@client.test>\r\n"
    b"References: <root@client.test>\r\n"
    b"Thread-Index: AdtlAAAAAAAAAAAAAAAAAAAAAAAAAA==\r\n"
    b"\r\n"
    b"What is the price?\r\n"
)


def _parent(team: Any, mailbox: Any) -> Message:
    pk, _ = store_one(team_id=team.pk, raw=PARENT, kind="lmtp", key="lmtp:test:parent", mailbox=mailbox)
    msg = Message.objects.get(pk=pk)
    thread: Any = ThreadFactory(team=team, subject="Price request")
    msg.thread = thread
    msg.save()
    return msg


def _parse(raw: bytes) -> Any:
    return email.message_from_bytes(raw, policy=policy.default)


def test_new_message_sent_stored_and_event(sink_mailbox: Any, smtp_sink: Any, user: Any) -> None:
    row, created = outbox_create(user=user, mailbox=sink_mailbox, data=ComposeInput(
        to=("Client <client@client.test>",), bcc=("hidden@client.test",), subject="Hello", text="Hi!",
        idempotency_key="k1"))
    assert created and row.state == "queued" and row.message_id.endswith("@company.test")
    assert parse_own_message_id(row.message_id) is not None
    report = outbox_send_due()
    assert report.sent == 1 and report.connections == 1
    row.refresh_from_db()
    assert row.state == "sent" and row.last_smtp_code == 250 and row.attempts == 1
    [got] = smtp_sink.messages
    assert sorted(got.rcpt_tos) == ["client@client.test", "hidden@client.test"]
    assert got.data.replace(b"\r\n", b"\n") == bytes(row.raw).replace(b"\r\n", b"\n")
    assert b"hidden@client.test" not in got.data  # Bcc is envelope-only
    # Stored as an outgoing message with an outbox source; the stored copy carries the Bcc header.
    msg = Message.objects.get(pk=row.stored_message_id or 0)
    assert msg.direction == "outgoing" and msg.message_id == row.message_id
    assert Source.objects.filter(message=msg, kind="outbox", key=f"outbox:{row.pk}").exists()
    assert MessageRaw.objects.get(message=msg).read() == row.sent_copy()
    assert Event.objects.filter(kind="message.sent", payload__outbox_id=row.pk).count() == 1
    # Running again sends nothing twice.
    assert outbox_send_due().claimed == 0 and len(smtp_sink.messages) == 1


def test_reply_headers_and_recipients(sink_mailbox: Any, team: Any, user: Any) -> None:
    parent = _parent(team, sink_mailbox)
    row, _ = outbox_create(user=user, mailbox=sink_mailbox, data=ComposeInput(
        mode="reply", in_reply_to=parent.pk, text="It is 100."))
    msg = _parse(bytes(row.raw))
    assert msg["To"].addresses[0].addr_spec == "client@client.test" and "Cc" not in msg
    assert msg["Subject"] == "Re: Price request"
    assert msg["In-Reply-To"] == "<parent@client.test>"
    assert msg["References"].split() == ["<root@client.test>", "<parent@client.test>"]
    assert msg["Thread-Topic"] == "Price request"
    assert parse_own_message_id(row.message_id).thread_id == parent.thread_id  # type: ignore[union-attr]
    assert row.thread_id == parent.thread_id
    body = str(msg.get_body(("plain",)).get_content())
    assert "It is 100." in body and "> What is the price?" in body
    import base64

    assert len(base64.b64decode(msg["Thread-Index"])) == 27  # parent's 22 + a child block

    row2, _ = outbox_create(user=user, mailbox=sink_mailbox, data=ComposeInput(
        mode="reply_all", in_reply_to=parent.pk, text="All"))
    assert row2.to == ["client@client.test", "colleague@company.test"]
    assert row2.cc == ["boss@client.test"]  # our own address is never a recipient

    row3, _ = outbox_create(user=user, mailbox=sink_mailbox, data=ComposeInput(
        mode="forward", in_reply_to=parent.pk, to=("partner@other.test",), text="FYI"))
    fwd = _parse(bytes(row3.raw))
    assert fwd["Subject"] == "Fwd: Price request" and "In-Reply-To" not in fwd
    assert [a.get_content_type() for a in fwd.iter_attachments()] == ["message/rfc822"]


def test_template_signature_and_html_sanitised(sink_mailbox: Any, team: Any, user: Any) -> None:
    user.first_name, user.last_name = "Mary", "Manager"
    user.save()
    contact = ContactFactory(team=team, name="Ann Client")
    ContactEmailFactory(contact=contact, address="ann@client.test")
    DealFactory(team=team, contact=contact, title="Big deal", amount=1000)
    Template.objects.create(team=team, name="offer", subject="Offer for {{ contact.first_name }}",
                            text="Dear {{ contact.name }}, about {{ deal.title }} ({{ deal.amount }}).\n{{ user.name }}",
                            html="<p>Dear {{ contact.name }}</p><script>alert(1)</script>")
    Signature.objects.create(user=user, text="Mary, Acme")
    row, _ = outbox_create(user=user, mailbox=sink_mailbox, data=ComposeInput(
        to=("ann@client.test",), template="offer"))
    msg = _parse(bytes(row.raw))
    assert msg["Subject"] == "Offer for Ann"
    text = str(msg.get_body(("plain",)).get_content())
    assert "Dear Ann Client, about Big deal (1000.00)." in text and "Mary Manager" in text
    assert "-- \nMary, Acme" in text.replace("\r\n", "\n")
    html = str(msg.get_body(("html",)).get_content())
    assert "<script>" not in html and "Dear Ann Client" in html


def test_sandbox_blocks_unsafe_template(sink_mailbox: Any, team: Any, user: Any) -> None:
    Template.objects.create(team=team, name="evil", text="{{ ''.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(InvalidInput) as exc:
        outbox_create(user=user, mailbox=sink_mailbox, data=ComposeInput(to=("a@client.test",), template="evil"))
    assert exc.value.field == "template"


def test_header_injection_is_400_naming_the_field(sink_mailbox: Any, user: Any) -> None:
    for data, field in [
        (ComposeInput(to=("a@client.test",), subject="hi\r\nBcc: x@evil.test"), "subject"),
        (ComposeInput(to=("a@client.test", "b@client.test\nBcc: x@evil.test")), "to[1]"),
        (ComposeInput(to=("a@client.test",), cc=("c@client.test\0",)), "cc[0]"),
    ]:
        with pytest.raises(InvalidInput) as exc:
            outbox_create(user=user, mailbox=sink_mailbox, data=data)
        assert exc.value.field == field
    assert OutboxMessage.objects.count() == 0


def test_idempotency(sink_mailbox: Any, user: Any) -> None:
    data = ComposeInput(to=("a@client.test",), subject="x", text="y", idempotency_key="same")
    a, created_a = outbox_create(user=user, mailbox=sink_mailbox, data=data)
    b, created_b = outbox_create(user=user, mailbox=sink_mailbox, data=data)
    assert created_a and not created_b and a.pk == b.pk and a.message_id == b.message_id
    with pytest.raises(Conflict):
        outbox_create(user=user, mailbox=sink_mailbox, data=ComposeInput(
            to=("a@client.test",), subject="x", text="other", idempotency_key="same"))


def test_5xx_recipient_rejection_fails_with_server_words(sink_mailbox: Any, smtp_sink: Any, user: Any) -> None:
    smtp_sink.handler.reject_rcpt["nobody@client.test"] = "550 5.1.1 <nobody@client.test>: Recipient address rejected"
    row, _ = outbox_create(user=user, mailbox=sink_mailbox, data=ComposeInput(to=("nobody@client.test",), text="x"))
    report = outbox_send_due()
    row.refresh_from_db()
    assert report.failed == 1 and row.state == "failed" and row.last_smtp_code == 550
    assert "Recipient address rejected" in row.last_smtp_text and row.last_error_kind == "rcpt_rejected"
    assert Event.objects.filter(kind="message.failed", payload__outbox_id=row.pk).exists()
    assert not Message.objects.exists()


def test_partial_rejection_recorded_per_recipient(sink_mailbox: Any, smtp_sink: Any, user: Any) -> None:
    smtp_sink.handler.reject_rcpt["nobody@client.test"] = "550 5.1.1 no such user"
    row, _ = outbox_create(user=user, mailbox=sink_mailbox, data=ComposeInput(
        to=("ok@client.test", "nobody@client.test"), text="x"))
    outbox_send_due()
    row.refresh_from_db()
    assert row.state == "sent" and row.last_error_kind == "partial"
    assert row.recipient_results == {"nobody@client.test": {"code": 550, "text": "5.1.1 no such user"}}


def test_4xx_and_server_down_retry_then_deliver(sink_mailbox: Any, smtp_sink: Any, user: Any) -> None:
    smtp_sink.handler.data_reply = "451 4.3.0 try again later"
    row, _ = outbox_create(user=user, mailbox=sink_mailbox, data=ComposeInput(to=("a@client.test",), text="x"))
    outbox_send_due()
    row.refresh_from_db()
    assert row.state == "retrying" and row.last_smtp_code == 451 and "try again later" in row.last_smtp_text
    first_wait = (row.next_attempt_at - timezone.now()).total_seconds()
    assert 10 < first_wait < 50  # base 30 s, jittered
    mid = row.message_id
    # The server goes away entirely.
    smtp_sink.handler.data_reply = None
    smtp_sink.stop()
    OutboxMessage.objects.filter(pk=row.pk).update(next_attempt_at=timezone.now())
    outbox_send_due()
    row.refresh_from_db()
    assert row.state == "retrying" and row.last_error_kind in {"connect", "dropped"}
    assert (row.next_attempt_at - timezone.now()).total_seconds() > first_wait / 3  # grows (jittered)
    # Back again: delivered with the same Message-ID and bytes.
    smtp_sink.start()
    OutboxMessage.objects.filter(pk=row.pk).update(next_attempt_at=timezone.now())
    outbox_send_due()
    row.refresh_from_db()
    assert row.state == "sent" and row.message_id == mid and row.attempts == 3
    assert len(smtp_sink.messages) == 1 and f"<{mid}>".encode() in smtp_sink.messages[0].data


def test_connection_reused_for_a_batch(sink_mailbox: Any, smtp_sink: Any, user: Any) -> None:
    for i in range(20):
        outbox_create(user=user, mailbox=sink_mailbox, data=ComposeInput(to=(f"c{i}@client.test",), text="x"))
    report = outbox_send_due()
    assert report.sent == 20 and report.connections == 1 and smtp_sink.handler.sessions == 1


def test_stuck_sending_row_is_resent_with_same_bytes(sink_mailbox: Any, smtp_sink: Any, user: Any) -> None:
    row, _ = outbox_create(user=user, mailbox=sink_mailbox, data=ComposeInput(to=("a@client.test",), text="x"))
    # A worker claimed it and died (after the server may have accepted it).
    assert outbox_claim_due(worker_id="otherhost:1:dead") == [row.pk]
    assert outbox_send_due().claimed == 0  # its lease is still valid
    OutboxMessage.objects.filter(pk=row.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert outbox_send_due().sent == 1
    row.refresh_from_db()
    assert row.state == "sent" and bytes(row.raw) in smtp_sink.messages[0].data.replace(b"\r\n", b"\r\n")


def test_send_later_cancel_and_retry(sink_mailbox: Any, smtp_sink: Any, user: Any) -> None:
    later = timezone.now() + timedelta(hours=1)
    row, _ = outbox_create(user=user, mailbox=sink_mailbox, data=ComposeInput(
        to=("a@client.test",), text="x", send_at=later))
    assert outbox_send_due().claimed == 0
    assert outbox_send_due(now=later + timedelta(seconds=1)).sent == 1
    with pytest.raises(Conflict):
        outbox_cancel(outbox=row)
    with pytest.raises(Conflict):
        outbox_retry(outbox=row)
    row2, _ = outbox_create(user=user, mailbox=sink_mailbox, data=ComposeInput(
        to=("b@client.test",), text="x", send_at=later))
    assert outbox_cancel(outbox=row2).state == "cancelled"
    assert outbox_send_due(now=later + timedelta(seconds=1)).claimed == 0
