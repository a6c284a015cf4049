"""Two-way threading end to end (issue 5 acceptance), real Postfix + Dovecot, asserting threads.

The story: a client writes to the manager; the manager answers from the CRM; the client answers from
his own mailbox; the manager answers from his own mail client (submission + APPEND to Sent, as
Thunderbird does); the relay-to-personal round trip; strangers trying to get into the thread.
Everything enters Mailroom the real way: IMAP sync of INBOX and Sent, the LMTP relay endpoint, our
outbox; then ``pipeline.drain()`` parses and links.
"""

from __future__ import annotations

import email
import imaplib
import smtplib
import time
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from typing import Any

import pytest
from tests.e2e.test_outbound_e2e import _fetch_all, _mailbox, _wait_count
from tests.factories import UserFactory

from mailroom.conversations import pipeline
from mailroom.conversations.models import Message, Thread
from mailroom.ingest.imap.worker import mailbox_sync_once
from mailroom.outbound.models import OutboxMessage, PersonalAddress, RelayHold, RelayToken
from mailroom.outbound.relay import relay_address
from mailroom.outbound.services import ComposeInput, outbox_append_due, outbox_create, outbox_send_due

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def _mail(*, frm: str, to: str, subject: str, mid: str, in_reply_to: str = "", references: str = "",
          body: str = "Hello", date: str = "Sat, 01 Mar 2025 10:00:00 +0000", cc: str = "") -> bytes:
    msg = EmailMessage()
    msg["From"] = frm
    msg["To"] = to
    if cc:
        msg["Cc"] = cc
    msg["Subject"] = subject
    msg["Date"] = date
    msg["Message-ID"] = f"<{mid}>"
    if in_reply_to:
        msg["In-Reply-To"] = f"<{in_reply_to}>"
    if references:
        msg["References"] = references
    msg.set_content(body)
    return msg.as_bytes(policy=policy.SMTP)


def _submit(postfix: Any, user: Any, rcpts: list[str], raw: bytes) -> None:
    """Send as the user's own mail client does: authenticated submission through Postfix."""
    with smtplib.SMTP(postfix.host, postfix.submission_port, timeout=30) as smtp:
        smtp.login(user.email, user.password)
        smtp.sendmail(user.email, rcpts, raw)


def _mx(postfix: Any, mail_from: str, rcpts: list[str], raw: bytes) -> None:
    """Send as a remote server does: unauthenticated, to Postfix's MX port."""
    with smtplib.SMTP(postfix.host, postfix.smtp_port, timeout=30) as smtp:
        smtp.sendmail(mail_from, rcpts, raw)


def _append_sent(user: Any, raw: bytes) -> None:
    conn = user.imap()
    try:
        typ, _ = conn.append('"Sent"', "(\\Seen)", imaplib.Time2Internaldate(time.time()), raw)
        assert typ == "OK"
    finally:
        conn.logout()


def _wait(pred: Any, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _sync(mailbox: Any) -> None:
    mailbox_sync_once(mailbox)
    pipeline.drain()


def _msg(message_id: str) -> Message:
    return Message.objects.select_related("thread").get(message_id=message_id)


def _headers(raw: bytes) -> Any:
    return email.message_from_bytes(raw, policy=policy.default)


@dataclass
class Story:
    manager: Any
    client: Any
    mailbox: Any
    thread: Thread
    first: Message  # the client's first mail
    reply: OutboxMessage  # the manager's answer from the CRM


def _start(team: Any, user: Any, dovecot: Any, postfix: Any, mail_user: Any) -> Story:
    """(a) the client writes to the manager -> synced, linked; (b) the manager answers from the CRM."""
    manager, client = mail_user("company.test"), mail_user("client.test")
    mailbox = _mailbox(team, manager, dovecot, postfix)
    first = _mail(frm=f"Client <{client.email}>", to=manager.email, subject="Pricing for 40 seats",
                  mid=f"c1.{client.email}", body="What would 40 seats cost?")
    _mx(postfix, client.email, [manager.email], first)
    _wait_count(manager, 1)
    _sync(mailbox)
    c1 = _msg(f"c1.{client.email}")
    assert c1.state == "linked" and c1.direction == "incoming" and c1.thread is not None

    row, _ = outbox_create(user=user, mailbox=mailbox, data=ComposeInput(mode="reply", in_reply_to=c1.pk,
                                                                          text="40 seats: 4,000 EUR."))
    assert outbox_send_due().sent == 1
    return Story(manager, client, mailbox, c1.thread, c1, row)


def test_client_crm_client_own_mail_client_one_thread(relay: Any, team: Any, user: Any, dovecot: Any,
                                                      postfix: Any, mail_user: Any) -> None:
    s = _start(team, user, dovecot, postfix, mail_user)
    c1_id = s.first.message_id

    # (b) the client's mailbox has our answer with the threading headers and our signed Message-ID.
    _wait_count(s.client, 1)
    got = _headers(_fetch_all(s.client)[0])
    assert got["Message-ID"] == f"<{s.reply.message_id}>" and s.reply.message_id.startswith("mr.")
    assert s.reply.message_id.endswith("@company.test")
    assert got["In-Reply-To"] == f"<{c1_id}>" and got["References"] == f"<{c1_id}>"
    assert got["Subject"] == "Re: Pricing for 40 seats"
    # The manager's Sent holds exactly one copy; synced, it is the same message: two sources, one thread.
    assert outbox_append_due() == 1
    assert [_headers(m)["Message-ID"] for m in _fetch_all(s.manager, "Sent")] == [f"<{s.reply.message_id}>"]
    _sync(s.mailbox)
    assert Message.objects.filter(message_id=s.reply.message_id).count() == 1
    ours = _msg(s.reply.message_id)
    assert sorted(ours.sources.values_list("kind", flat=True)) == ["imap", "outbox"]
    assert ours.sources.get(kind="imap").folder.role == "sent"  # type: ignore[union-attr]
    assert ours.direction == "outgoing" and ours.thread_id == s.thread.pk

    # (c) the client answers from his own account (submission), to the manager's address.
    c2_id = f"c2.{s.client.email}"
    _submit(postfix, s.client, [s.manager.email], _mail(
        frm=f"Client <{s.client.email}>", to=s.manager.email, subject="Re: Pricing for 40 seats", mid=c2_id,
        in_reply_to=s.reply.message_id, references=f"<{c1_id}> <{s.reply.message_id}>",
        date="Sat, 01 Mar 2025 11:00:00 +0000", body="Can you do 3,500?"))
    _wait_count(s.manager, 2)
    _sync(s.mailbox)
    c2 = _msg(c2_id)
    assert (c2.thread_id, c2.direction, c2.state) == (s.thread.pk, "incoming", "linked")

    # (d) the manager answers from his own mail client: submission, then APPEND to Sent.
    m2_id = f"tb1.{s.manager.email}"
    m2 = _mail(frm=f"Manager <{s.manager.email}>", to=s.client.email, subject="Re: Pricing for 40 seats", mid=m2_id,
               in_reply_to=c2_id, references=f"<{c1_id}> <{s.reply.message_id}> <{c2_id}>",
               date="Sat, 01 Mar 2025 12:00:00 +0000", body="3,700 and we have a deal.")
    _submit(postfix, s.manager, [s.client.email], m2)
    _append_sent(s.manager, m2)
    _wait_count(s.client, 2)
    _sync(s.mailbox)
    answer = _msg(m2_id)
    assert (answer.thread_id, answer.direction, answer.state) == (s.thread.pk, "outgoing", "linked")
    assert list(answer.sources.values_list("kind", "folder__role")) == [("imap", "sent")]
    assert Message.objects.filter(thread=s.thread).count() == 4
    assert Thread.objects.filter(team=team).count() == 1


def test_relay_to_personal_round_trip_stays_in_the_thread(relay: Any, team: Any, dovecot: Any, postfix: Any,
                                                          mail_user: Any) -> None:
    postfix.add_domain("personal.test")
    personal = mail_user("personal.test")
    s = _start(team, UserFactory(team=team), dovecot, postfix, mail_user)
    owner: Any = UserFactory(team=team, email=s.manager.email)
    PersonalAddress.objects.create(user=owner, address=personal.email)
    _wait_count(s.client, 1)
    # The manager asks for the client's replies on his phone: relay_to_owner on this send.
    row, _ = outbox_create(user=owner, mailbox=s.mailbox, data=ComposeInput(
        mode="reply", in_reply_to=s.first.pk, text="Call me any time.", relay_to_owner=True))
    assert outbox_send_due().sent == 1
    _wait_count(s.client, 2)
    reply_to = _headers(_fetch_all(s.client)[-1])["Reply-To"].addresses[0].addr_spec
    assert reply_to == relay_address(row.relay_token.token)  # type: ignore[union-attr]

    # The client answers to the Reply-To (the relay address, through the MX).
    c3_id = f"c3.{s.client.email}"
    _mx(postfix, s.client.email, [reply_to], _mail(
        frm=s.client.email, to=reply_to, subject="Re: Pricing for 40 seats", mid=c3_id,
        in_reply_to=row.message_id, references=f"<{s.first.message_id}> <{row.message_id}>",
        date="Sat, 01 Mar 2025 13:00:00 +0000", body="Is 3,600 possible?"))
    _wait(lambda: OutboxMessage.objects.filter(origin="relay_forward").exists())
    pipeline.drain()
    assert (_msg(c3_id).thread_id, _msg(c3_id).direction) == (s.thread.pk, "incoming")
    assert outbox_send_due().sent == 1
    _wait_count(personal, 1)
    fwd = _headers(_fetch_all(personal)[0])
    owner_addr = fwd["Reply-To"].addresses[0].addr_spec
    assert owner_addr == relay_address(RelayToken.objects.get(kind="owner").token)

    # The owner answers from his personal mailbox; Mailroom sends it from the company mailbox.
    _mx(postfix, personal.email, [owner_addr], _mail(
        frm=personal.email, to=owner_addr, subject=f"Re: {fwd['Subject']}", mid=f"p1.{personal.email}",
        date="Sat, 01 Mar 2025 14:00:00 +0000", body="Yes, 3,600.").replace(
        b"From:", b"Authentication-Results: mx.company.test; dkim=pass header.d=personal.test\r\nFrom:", 1))
    _wait(lambda: OutboxMessage.objects.filter(origin="relay_owner").exists())
    assert outbox_send_due().sent == 1
    _wait_count(s.client, 3)
    final = _fetch_all(s.client)[-1]
    assert personal.email.encode() not in final and b"Yes, 3,600." in final
    out = OutboxMessage.objects.get(origin="relay_owner")
    assert _headers(final)["Message-ID"] == f"<{out.message_id}>" and _headers(final)["In-Reply-To"] == f"<{c3_id}>"
    pipeline.drain()
    relayed = Message.objects.get(pk=out.stored_message_id or 0)
    assert out.created_by == owner
    assert (relayed.thread_id, relayed.direction, relayed.state) == (s.thread.pk, "outgoing", "linked")
    # The forward to the personal address is private: not a message of the thread.
    assert not Message.objects.filter(subject__startswith="[Mailroom]").exists()
    assert Thread.objects.filter(team=team).count() == 1


def test_strangers_do_not_get_into_the_thread(relay: Any, team: Any, user: Any, dovecot: Any, postfix: Any,
                                              mail_user: Any) -> None:
    s = _start(team, user, dovecot, postfix, mail_user)
    stranger = mail_user("client.test")
    reply_to = relay_address(s.reply.relay_token.token)  # type: ignore[union-attr]
    refs = f"<{s.first.message_id}> <{s.reply.message_id}>"

    # (f1) a fake reply to the relay address: held for review, never stored.
    fake_id = f"fake1.{stranger.email}"
    _mx(postfix, stranger.email, [reply_to], _mail(
        frm=stranger.email, to=reply_to, subject="Re: Pricing for 40 seats", mid=fake_id,
        in_reply_to=s.reply.message_id, references=refs, body="Pay to this account instead."))
    _wait(lambda: RelayHold.objects.filter(mail_from=stranger.email).exists())
    assert not Message.objects.filter(message_id=fake_id).exists()

    # (f2) a forged In-Reply-To (our signed Message-ID) to the manager's INBOX: stored, not in the thread.
    forged_id = f"fake2.{stranger.email}"
    _mx(postfix, stranger.email, [s.manager.email], _mail(
        frm=stranger.email, to=s.manager.email, subject="Re: Pricing for 40 seats", mid=forged_id,
        in_reply_to=s.reply.message_id, references=refs, date="Sat, 01 Mar 2025 15:00:00 +0000",
        body="Updated bank details attached."))
    _wait_count(s.manager, 2)
    _sync(s.mailbox)
    forged = _msg(forged_id)
    assert forged.state == "linked" and forged.thread is not None
    assert forged.thread_id != s.thread.pk
    assert forged.thread.verification == "unverified" and forged.thread.claimed_thread_id == s.thread.pk
    assert set(Message.objects.filter(thread=s.thread).values_list("message_id", flat=True)) == {
        s.first.message_id, s.reply.message_id}
