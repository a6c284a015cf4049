"""The relay against real Postfix (relay domain -> Mailroom's LMTP endpoint) and Dovecot."""

from __future__ import annotations

import email
import smtplib
import time
from email import policy
from typing import Any

import pytest
from tests.e2e.test_outbound_e2e import _fetch_all, _mailbox, _wait_count
from tests.factories import FolderFactory, UserFactory

from mailroom.conversations.models import Message
from mailroom.ingest.rawstore import IncomingRaw, store_batch
from mailroom.outbound.models import OutboxMessage, PersonalAddress, RelayHold, RelayToken
from mailroom.outbound.relay import relay_address
from mailroom.outbound.services import ComposeInput, outbox_create, outbox_send_due

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def _send_via_postfix(postfix: Any, mail_from: str, rcpts: list[str], raw: bytes) -> None:
    with smtplib.SMTP(postfix.host, postfix.smtp_port, timeout=30) as smtp:
        smtp.sendmail(mail_from, rcpts, raw)


def _wait(pred: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_client_reply_via_relay_and_inbox_stranger_held(relay: Any, team: Any, user: Any, dovecot: Any,
                                                         postfix: Any, mail_user: Any) -> None:
    manager, client = mail_user("company.test"), mail_user("client.test")
    mailbox = _mailbox(team, manager, dovecot, postfix)
    row, _ = outbox_create(user=user, mailbox=mailbox, data=ComposeInput(to=(client.email,), subject="Offer", text="Hi"))
    outbox_send_due()
    _wait_count(client, 1)
    got = email.message_from_bytes(_fetch_all(client)[0], policy=policy.default)
    reply_to = got["Reply-To"].addresses[0].addr_spec
    assert reply_to == relay_address(row.relay_token.token)  # type: ignore[union-attr]

    # The client answers to the relay address and Cc's the manager: two paths, one message.
    answer = (f"From: {client.email}\r\nTo: {reply_to}\r\nCc: {manager.email}\r\nSubject: Re: Offer\r\n"
              f"Message-ID: <ans1@client.test>\r\nIn-Reply-To: <{row.message_id}>\r\n"
              f"Date: Sat, 01 Mar 2025 12:00:00 +0000\r\n\r\nYes please.\r\n").encode()
    _send_via_postfix(postfix, client.email, [reply_to, manager.email], answer)
    _wait(lambda: Message.objects.filter(message_id="ans1@client.test").exists())
    _wait_count(manager, 1)
    inbox: Any = FolderFactory(mailbox=mailbox, name="INBOX", uidvalidity=dovecot.uidvalidity(manager.email))
    store_batch(team_id=team.pk, kind="imap", mailbox=mailbox, folder=inbox, uidvalidity=inbox.uidvalidity,
                items=[IncomingRaw(raw=_fetch_all(manager)[0], uid=1)])
    msg = Message.objects.get(message_id="ans1@client.test")
    assert sorted(msg.sources.values_list("kind", flat=True)) == ["imap", "lmtp"]
    # ... and one "received" event, whichever path came first.
    from mailroom.events.models import Event

    assert Event.objects.filter(kind="message.received", payload__message=msg.pk).count() == 1

    # A stranger sending a fake reply to the relay address: held, not in the thread.
    stranger = mail_user("client.test")
    fake = answer.replace(client.email.encode(), stranger.email.encode()).replace(b"ans1@", b"fake1@")
    _send_via_postfix(postfix, stranger.email, [reply_to], fake)
    _wait(lambda: RelayHold.objects.filter(mail_from=stranger.email).exists())
    assert not Message.objects.filter(message_id="fake1@client.test").exists()


def test_relay_to_personal_round_trip(relay: Any, team: Any, dovecot: Any, postfix: Any, mail_user: Any) -> None:
    manager, client = mail_user("company.test"), mail_user("client.test")
    postfix.add_domain("personal.test")
    personal = mail_user("personal.test")
    owner: Any = UserFactory(team=team, email=manager.email)
    PersonalAddress.objects.create(user=owner, address=personal.email)
    mailbox = _mailbox(team, manager, dovecot, postfix)
    row, _ = outbox_create(user=owner, mailbox=mailbox, data=ComposeInput(
        to=(client.email,), subject="Offer", text="Hi", relay_to_owner=True))
    outbox_send_due()
    _wait_count(client, 1)
    reply_to = relay_address(row.relay_token.token)  # type: ignore[union-attr]
    answer = (f"From: {client.email}\r\nTo: {reply_to}\r\nSubject: Re: Offer\r\nMessage-ID: <c2@client.test>\r\n"
              f"In-Reply-To: <{row.message_id}>\r\nDate: Sat, 01 Mar 2025 12:00:00 +0000\r\n\r\nDiscount?\r\n").encode()
    _send_via_postfix(postfix, client.email, [reply_to], answer)
    _wait(lambda: OutboxMessage.objects.filter(origin="relay_forward").exists())
    outbox_send_due()
    _wait_count(personal, 1)
    fwd = email.message_from_bytes(_fetch_all(personal)[0], policy=policy.default)
    owner_addr = fwd["Reply-To"].addresses[0].addr_spec
    assert owner_addr == relay_address(RelayToken.objects.get(kind="owner").token)
    # The owner answers from his personal mailbox (his MTA's verdict in a trusted Authentication-Results).
    own = (f"Authentication-Results: mx.company.test; dkim=pass header.d=personal.test\r\n"
           f"From: {personal.email}\r\nTo: {owner_addr}\r\nSubject: Re: {fwd['Subject']}\r\n"
           f"Message-ID: <o1@personal.test>\r\nDate: Sat, 01 Mar 2025 13:00:00 +0000\r\n\r\n5% off.\r\n").encode()
    _send_via_postfix(postfix, personal.email, [owner_addr], own)
    _wait(lambda: OutboxMessage.objects.filter(origin="relay_owner").exists())
    outbox_send_due()
    _wait_count(client, 2)
    final = [email.message_from_bytes(m, policy=policy.default) for m in _fetch_all(client)][-1]
    assert final["From"].addresses[0].addr_spec == manager.email
    assert final["In-Reply-To"] == "<c2@client.test>"
    raw = _fetch_all(client)[-1]
    assert personal.email.encode() not in raw and b"5% off." in raw
    out = OutboxMessage.objects.get(origin="relay_owner")
    assert out.created_by == owner and Message.objects.get(pk=out.stored_message_id).direction == "outgoing"  # type: ignore[misc]
