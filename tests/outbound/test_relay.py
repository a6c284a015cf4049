"""The relay: tokens, routing by envelope, holds, owner answers, loop prevention, the LMTP endpoint."""

from __future__ import annotations

import smtplib
from typing import Any

import pytest

from mailroom.conversations.models import Message, Source
from mailroom.events.models import Event
from mailroom.ingest.rawstore import IncomingRaw, store_batch
from mailroom.outbound.models import OutboxMessage, PersonalAddress, RelayHold, RelayToken
from mailroom.outbound.relay import (
    parse_relay_recipient,
    relay_address,
    relay_receive,
    relay_token_revoke,
)
from mailroom.outbound.services import outbox_send_due
from tests.factories import FolderFactory, UserFactory
from tests.outbound.relay_mail import RELAY, reply_mail, sent_offer


def test_token_address_case_folding_and_forgery(db: Any, relay_on: None, sink_mailbox: Any, user: Any) -> None:
    row = sent_offer(user, sink_mailbox)
    assert row.relay_token is not None
    addr = relay_address(row.relay_token.token)
    assert f"Reply-To: Acme Sales <{addr}>".encode() in bytes(row.raw)
    assert parse_relay_recipient(addr.upper()) == row.relay_token.token_id
    token = row.relay_token.token
    forged = token[:10] + ("a" if token[10] != "a" else "b") + token[11:]  # a data character, not padding bits
    assert parse_relay_recipient(f"reply+{forged}@{RELAY}") is None
    assert parse_relay_recipient(f"reply+{token}@other.test") is None
    assert len(token) >= 26  # >= 128 bits


@pytest.mark.django_db
def test_client_reply_joins_stranger_held_revoked_refused(relay_on: None, sink_mailbox: Any, user: Any) -> None:
    row = sent_offer(user, sink_mailbox)
    addr = relay_address(row.relay_token.token)  # type: ignore[union-attr]
    reply = reply_mail(addr, in_reply_to=row.message_id)
    assert relay_receive(mail_from="client@client.test", rcpt=addr, raw=reply).code == 250
    msg = Message.objects.get(message_id="reply1@client.test")
    assert msg.direction == "incoming" and msg.sources.get().kind == "lmtp"
    assert Event.objects.filter(kind="message.received", payload__message=msg.pk).exists()
    # Same delivery again (an MTA retry): one source, one message.
    assert relay_receive(mail_from="client@client.test", rcpt=addr, raw=reply).code == 250
    assert Source.objects.filter(message=msg).count() == 1
    # A stranger with the (leaked) address: held, not in the thread.
    fake = reply_mail(addr, sender="stranger@evil.test", mid="fake@evil.test", in_reply_to=row.message_id)
    res = relay_receive(mail_from="stranger@evil.test", rcpt=addr, raw=fake)
    assert res.code == 250 and "held" in res.text
    assert not Message.objects.filter(message_id="fake@evil.test").exists()
    assert RelayHold.objects.get().mail_from == "stranger@evil.test"
    # Revoked: 550, nothing stored.
    relay_token_revoke(token=row.relay_token)  # type: ignore[arg-type]
    late = reply_mail(addr, mid="late@client.test")
    assert relay_receive(mail_from="client@client.test", rcpt=addr, raw=late).code == 550
    assert not Message.objects.filter(message_id="late@client.test").exists()


@pytest.mark.django_db
def test_same_reply_by_relay_and_inbox_is_one_message_two_sources(relay_on: None, sink_mailbox: Any, user: Any) -> None:
    row = sent_offer(user, sink_mailbox)
    addr = relay_address(row.relay_token.token)  # type: ignore[union-attr]
    body = reply_mail(addr)
    relay_receive(mail_from="client@client.test", rcpt=addr, raw=b"Received: from a by relay\r\n" + body)
    inbox: Any = FolderFactory(mailbox=sink_mailbox)
    store_batch(team_id=sink_mailbox.team_id, kind="imap", mailbox=sink_mailbox, folder=inbox, uidvalidity=1,
                items=[IncomingRaw(raw=b"Received: from b by imap\r\n" + body, uid=7)])
    msg = Message.objects.get(message_id="reply1@client.test")
    assert sorted(msg.sources.values_list("kind", flat=True)) == ["imap", "lmtp"]
    assert Message.objects.filter(message_id="reply1@client.test").count() == 1


@pytest.mark.django_db
def test_personal_relay_round_trip(relay_on: None, sink_mailbox: Any, smtp_sink: Any, team: Any) -> None:
    owner: Any = UserFactory(team=team, email="owner@company.test")
    PersonalAddress.objects.create(user=owner, address="owner@personal.test")
    row = sent_offer(owner, sink_mailbox, relay_to_owner=True)
    assert row.relay_token.forward_to_owner  # type: ignore[union-attr]
    addr = relay_address(row.relay_token.token)  # type: ignore[union-attr]
    relay_receive(mail_from="client@client.test", rcpt=addr, raw=reply_mail(addr, in_reply_to=row.message_id))
    fwd = OutboxMessage.objects.get(origin="relay_forward")
    assert fwd.to == ["owner@personal.test"] and b"X-Mailroom-Relay: forward" in bytes(fwd.raw)
    owner_token = RelayToken.objects.get(kind="owner")
    owner_addr = relay_address(owner_token.token)
    assert owner_addr.encode() in bytes(fwd.raw)
    outbox_send_due()
    fwd.refresh_from_db()
    assert fwd.state == "sent" and fwd.stored_message_id is None  # a private forward is not in the thread

    answer = (
        "Authentication-Results: mx.company.test; dkim=pass header.d=personal.test\r\n"
        f"From: Owner <owner@personal.test>\r\nTo: {owner_addr}\r\nSubject: Re: [Mailroom] Re: Hello\r\n"
        "Message-ID: <answer1@personal.test>\r\nDate: Sat, 01 Mar 2025 11:00:00 +0000\r\n\r\nDeal: 10% off.\r\n"
    ).encode()
    # Not the owner: refused.
    assert relay_receive(mail_from="someone@personal.test", rcpt=owner_addr, raw=answer).code == 550
    # No trusted authentication verdict: held.
    unauth = answer.replace(b"mx.company.test", b"mx.evil.test")
    assert "held" in relay_receive(mail_from="owner@personal.test", rcpt=owner_addr, raw=unauth).text
    # The owner's out-of-office: never relayed.
    ooo = answer.replace(b"Message-ID: <answer1", b"Auto-Submitted: auto-replied\r\nMessage-ID: <ooo")
    assert "held" in relay_receive(mail_from="owner@personal.test", rcpt=owner_addr, raw=ooo).text
    assert not OutboxMessage.objects.filter(origin="relay_owner").exists()
    # The real answer: goes to the client from the company mailbox.
    assert relay_receive(mail_from="owner@personal.test", rcpt=owner_addr, raw=answer).code == 250
    out = OutboxMessage.objects.get(origin="relay_owner")
    assert out.to == ["client@client.test"] and out.created_by == owner
    raw = bytes(out.raw)
    assert b"From: Acme Sales <manager@company.test>" in raw and b"personal.test" not in raw
    assert b"Deal: 10% off." in raw and b"In-Reply-To: <reply1@client.test>" in raw
    outbox_send_due()
    out.refresh_from_db()
    assert out.state == "sent"
    stored = Message.objects.get(pk=out.stored_message_id or 0)
    assert stored.direction == "outgoing"


@pytest.mark.django_db
def test_automatic_mail_is_stored_but_never_forwarded(relay_on: None, sink_mailbox: Any, team: Any) -> None:
    owner: Any = UserFactory(team=team)
    PersonalAddress.objects.create(user=owner, address="owner@personal.test")
    row = sent_offer(owner, sink_mailbox, relay_to_owner=True)
    addr = relay_address(row.relay_token.token)  # type: ignore[union-attr]
    for i, extra in enumerate(["Auto-Submitted: auto-replied\r\n", "Precedence: bulk\r\n", "List-Id: <x.y>\r\n"]):
        relay_receive(mail_from="client@client.test", rcpt=addr, raw=reply_mail(addr, mid=f"a{i}@c", extra=extra))
    assert Message.objects.filter(message_id__in=["a0@c", "a1@c", "a2@c"]).count() == 3
    assert not OutboxMessage.objects.filter(origin="relay_forward").exists()
    # A bounce (null sender) neither.
    relay_receive(mail_from="", rcpt=addr, raw=reply_mail(addr, mid="b@c", sender="mailer-daemon@client.test"))
    assert not OutboxMessage.objects.filter(origin="relay_forward").exists()


@pytest.mark.django_db(transaction=True)
def test_lmtp_endpoint_answers_per_recipient(relay_on: None, sink_mailbox: Any, user: Any) -> None:
    from mailroom.ingest.lmtp.server import start_relay_server
    from tests.outbound.conftest import free_port

    row = sent_offer(user, sink_mailbox)
    addr = relay_address(row.relay_token.token)  # type: ignore[union-attr]
    port = free_port()
    controller = start_relay_server(host="127.0.0.1", port=port, lmtp=True)
    try:
        with smtplib.LMTP("127.0.0.1", port, timeout=10) as lmtp:
            lmtp.ehlo_or_helo_if_needed()
            code, _ = lmtp.docmd("MAIL FROM:<client@client.test>")
            assert code == 250
            assert lmtp.docmd(f"RCPT TO:<reply+{'a' * 39}@{RELAY}>")[0] == 550  # forged
            assert lmtp.docmd(f"RCPT TO:<{addr}>")[0] == 250
            lmtp.putcmd("DATA")
            assert lmtp.getreply()[0] == 354
            lmtp.send(reply_mail(addr).replace(b"\r\n.", b"\r\n..") + b".\r\n")
            code, text = lmtp.getreply()
            assert code == 250, text
        assert Message.objects.filter(message_id="reply1@client.test", sources__kind="lmtp").exists()
    finally:
        controller.stop()
