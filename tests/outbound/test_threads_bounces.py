"""Relay token -> thread lookup for the linker, bounces of our mail, settings through connect.py,
the compose hash."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.utils import timezone

from mailroom.conversations.models import Message, Thread
from mailroom.events.models import Event
from mailroom.ingest.rawstore import IncomingRaw, store_batch
from mailroom.outbound.bounces import outbox_bounces_record, outbox_bounces_sweep
from mailroom.outbound.models import OutboxMessage, RelayToken
from mailroom.outbound.relay import (
    lmtp_source_recipient,
    relay_address,
    relay_receive,
    relay_thread_for_message,
    relay_threads_for_messages,
)
from mailroom.outbound.services import AttachmentInput, ComposeInput, outbox_create, outbox_send_due
from tests.factories import FolderFactory, MailboxFactory, TeamFactory, ThreadFactory

RELAY = "relay.company.test"


@pytest.fixture
def relay_on(settings: Any) -> None:
    settings.MAILROOM_RELAY_DOMAIN = RELAY
    settings.MAILROOM_TRUSTED_AUTHSERV_IDS = ["mx.company.test"]


def _reply(addr: str, mid: str, sender: str = "client@client.test") -> bytes:
    return (f"From: Client <{sender}>\r\nTo: {addr}\r\nSubject: Re: Hello\r\nDate: Sat, 01 Mar 2025 10:00:00 +0000\r\n"
            f"Message-ID: <{mid}>\r\n\r\nNo In-Reply-To, no References.\r\n").encode()


def _sent_with_thread(user: Any, mailbox: Any) -> tuple[OutboxMessage, Thread]:
    row, _ = outbox_create(user=user, mailbox=mailbox, data=ComposeInput(to=("client@client.test",), subject="Hello",
                                                                          text="Offer"))
    thread: Any = ThreadFactory(team=mailbox.team)
    assert row.relay_token is not None
    RelayToken.objects.filter(pk=row.relay_token.pk).update(thread=thread)
    return row, thread


def test_lmtp_source_recipient() -> None:
    assert lmtp_source_recipient("lmtp:reply+abc@relay.test:0123ab") == "reply+abc@relay.test"
    assert lmtp_source_recipient("outbox:12") == ""
    assert lmtp_source_recipient("lmtp:nohash") == ""


@pytest.mark.django_db
def test_relay_delivery_names_the_token_thread_without_in_reply_to(relay_on: None, sink_mailbox: Any,
                                                                   user: Any) -> None:
    row, thread = _sent_with_thread(user, sink_mailbox)
    addr = relay_address(row.relay_token.token)  # type: ignore[union-attr]
    assert relay_receive(mail_from="client@client.test", rcpt=addr, raw=_reply(addr, "r1@client.test")).code == 250
    msg = Message.objects.get(message_id="r1@client.test")
    assert relay_thread_for_message(msg.pk) == thread.pk
    assert relay_threads_for_messages([msg.pk, msg.pk]) == {msg.pk: thread.pk}


@pytest.mark.django_db
def test_token_without_thread_follows_its_root_message(relay_on: None, sink_mailbox: Any, user: Any) -> None:
    row, _ = outbox_create(user=user, mailbox=sink_mailbox, data=ComposeInput(to=("client@client.test",), text="x"))
    addr = relay_address(row.relay_token.token)  # type: ignore[union-attr]
    relay_receive(mail_from="client@client.test", rcpt=addr, raw=_reply(addr, "r2@client.test"))
    msg = Message.objects.get(message_id="r2@client.test")
    assert relay_thread_for_message(msg.pk) is None  # our message is not linked anywhere yet
    outbox_send_due()
    row.refresh_from_db()
    thread: Any = ThreadFactory(team=sink_mailbox.team)
    Message.objects.filter(pk=row.stored_message_id or 0).update(thread=thread)
    assert relay_thread_for_message(msg.pk) == thread.pk


@pytest.mark.django_db
def test_no_thread_from_headers_other_teams_or_revoked_tokens(relay_on: None, sink_mailbox: Any, user: Any) -> None:
    row, thread = _sent_with_thread(user, sink_mailbox)
    token = row.relay_token
    assert token is not None
    addr = relay_address(token.token)
    # The relay address in a header only (IMAP copy): no evidence, the envelope decides.
    inbox: Any = FolderFactory(mailbox=sink_mailbox)
    res = store_batch(team_id=sink_mailbox.team_id, kind="imap", mailbox=sink_mailbox, folder=inbox, uidvalidity=1,
                      items=[IncomingRaw(raw=_reply(addr, "h1@client.test"), uid=1)])
    assert relay_thread_for_message(res.message_pks[0]) is None
    # An LMTP source with a forged token (signature broken), stored under the same team.
    forged = f"reply+{token.token[:10]}{'a' if token.token[10] != 'a' else 'b'}{token.token[11:]}@{RELAY}"  # a data character
    res = store_batch(team_id=sink_mailbox.team_id, kind="lmtp", mailbox=sink_mailbox,
                      items=[IncomingRaw(raw=_reply(forged, "f1@client.test"), key=f"lmtp:{forged}:00")])
    assert relay_thread_for_message(res.message_pks[0]) is None
    # The real token, but the message belongs to another team.
    other: Any = MailboxFactory(team=TeamFactory())
    res = store_batch(team_id=other.team_id, kind="lmtp", mailbox=other,
                      items=[IncomingRaw(raw=_reply(addr, "o1@client.test"), key=f"lmtp:{addr}:11")])
    assert relay_thread_for_message(res.message_pks[0]) is None
    # Revoked before the message arrived: no evidence; revoked after: still its thread.
    res = store_batch(team_id=sink_mailbox.team_id, kind="lmtp", mailbox=sink_mailbox,
                      items=[IncomingRaw(raw=_reply(addr, "v1@client.test"), key=f"lmtp:{addr}:22")])
    pk = res.message_pks[0]
    RelayToken.objects.filter(pk=token.pk).update(revoked_at=timezone.now() + timedelta(minutes=1))
    assert relay_thread_for_message(pk) == thread.pk
    RelayToken.objects.filter(pk=token.pk).update(revoked_at=timezone.now() - timedelta(minutes=1))
    assert relay_thread_for_message(pk) is None


@pytest.mark.django_db
def test_no_relay_domain_no_thread(settings: Any, sink_mailbox: Any) -> None:
    settings.MAILROOM_RELAY_DOMAIN = ""
    res = store_batch(team_id=sink_mailbox.team_id, kind="lmtp", mailbox=sink_mailbox,
                      items=[IncomingRaw(raw=_reply("reply+x@relay.test", "n1@c"), key="lmtp:reply+x@relay.test:1")])
    assert relay_thread_for_message(res.message_pks[0]) is None


# --- bounces -------------------------------------------------------------------------------------------
def _bounce(team_id: int, mailbox: Any, original: str, recipients: list[dict[str, Any]], mid: str) -> int:
    raw = (f"From: MAILER-DAEMON@mx.client.test\r\nTo: manager@company.test\r\nSubject: Undelivered Mail\r\n"
           f"Message-ID: <{mid}>\r\nDate: Sat, 01 Mar 2025 10:00:00 +0000\r\n\r\nbounce\r\n").encode()
    res = store_batch(team_id=team_id, kind="lmtp", mailbox=mailbox, items=[IncomingRaw(raw=raw, key=f"lmtp:b:{mid}")])
    pk = res.message_pks[0]
    Message.objects.filter(pk=pk).update(state=Message.State.PARSED, bounce={
        "is_bounce": True, "kind": "dsn", "original_message_id": original, "recipients": recipients,
        "is_complaint": False, "feedback_type": "", "reporting_mta": "mx.client.test"})
    return pk


@pytest.mark.django_db
def test_bounce_marks_the_recipient_and_records_one_event(sink_mailbox: Any, user: Any) -> None:
    row, _ = outbox_create(user=user, mailbox=sink_mailbox, data=ComposeInput(
        to=("a@client.test", "b@client.test"), subject="Offer", text="x"))
    assert outbox_send_due().sent == 1
    failed = {"address": "A@client.test", "status": "5.1.1", "action": "failed", "hard": True, "reason": "userunknown",
              "reply_code": "550", "diagnostic": "550 5.1.1 no such user"}
    delayed = {**failed, "address": "b@client.test", "action": "delayed", "status": "4.4.7", "hard": False}
    pk = _bounce(sink_mailbox.team_id, sink_mailbox, f"<{row.message_id}>", [failed, delayed], "dsn1@mx.client.test")
    assert outbox_bounces_record(message_pks=[pk]) == 1
    row.refresh_from_db()
    assert row.state == "sent" and row.last_error_kind == "bounced"
    assert row.recipient_results == {"a@client.test": {
        "code": 550, "status": "5.1.1", "text": "550 5.1.1 no such user", "reason": "userunknown", "hard": True,
        "bounced": True, "bounce_message": pk}}
    ev = Event.objects.get(kind="message.bounced")
    assert ev.team_id == sink_mailbox.team_id
    assert ev.payload == {"outbox_id": row.pk, "message_id": row.message_id, "mailbox_id": sink_mailbox.pk,
                          "bounce_message": pk, "recipients": ["a@client.test"], "hard": True, "kind": "dsn"}
    # Seen again (the pipeline hook and the sweep): nothing more.
    assert outbox_bounces_record(message_pks=[pk]) == 0
    assert outbox_bounces_sweep() == 0
    assert Event.objects.filter(kind="message.bounced").count() == 1


@pytest.mark.django_db
def test_bounce_of_unknown_or_foreign_message_changes_nothing(sink_mailbox: Any, user: Any) -> None:
    row, _ = outbox_create(user=user, mailbox=sink_mailbox, data=ComposeInput(to=("a@client.test",), text="x"))
    outbox_send_due()
    rcpt = [{"address": "a@client.test", "action": "failed", "hard": True}]
    unknown = _bounce(sink_mailbox.team_id, sink_mailbox, "nobody@else.test", rcpt, "dsn2@mx")
    other: Any = MailboxFactory(team=TeamFactory())
    foreign = _bounce(other.team_id, other, row.message_id, rcpt, "dsn3@mx")  # another team names our id
    assert outbox_bounces_record(message_pks=[unknown, foreign]) == 0
    row.refresh_from_db()
    assert row.recipient_results == {} and row.last_error_kind == ""
    assert not Event.objects.filter(kind="message.bounced").exists()


@pytest.mark.django_db
def test_sweep_applies_a_free_text_bounce_of_a_single_recipient_mail(sink_mailbox: Any, user: Any) -> None:
    row, _ = outbox_create(user=user, mailbox=sink_mailbox, data=ComposeInput(to=("a@client.test",), text="x"))
    outbox_send_due()
    pk = _bounce(sink_mailbox.team_id, sink_mailbox, row.message_id, [], "dsn4@mx")
    assert outbox_bounces_sweep() == 1
    row.refresh_from_db()
    assert row.recipient_results["a@client.test"]["bounce_message"] == pk


# --- settings through mailboxes.connect (OAuth2 refresh) --------------------------------------------------
@pytest.mark.django_db
def test_smtp_settings_refresh_an_expired_oauth2_token(monkeypatch: pytest.MonkeyPatch, team: Any) -> None:
    from mailroom.mailboxes import connect
    from mailroom.outbound.smtp import settings_for_mailbox

    mb: Any = MailboxFactory(team=team, auth_method="oauth2", smtp_host="127.0.0.1", smtp_port=2525)
    mb.set_secret({"access_token": "old", "expires_at": 0, "refresh_token": "r1", "token_url": "http://127.0.0.1:1/t"})
    mb.save()
    calls: list[str] = []

    def refresh(mailbox: Any, secret: dict[str, Any]) -> dict[str, Any]:
        calls.append(secret["refresh_token"])
        return {**secret, "access_token": "fresh", "expires_at": 4e9, "refresh_token": "r2"}

    monkeypatch.setattr(connect, "_refresh_access_token", refresh)
    s = settings_for_mailbox(mb, timeout=5)
    assert (s.auth_method, s.access_token, s.timeout, calls) == ("oauth2", "fresh", 5, ["r1"])


@pytest.mark.django_db
def test_failed_oauth2_refresh_leaves_the_rows_to_retry(sink_mailbox: Any, user: Any) -> None:
    row, _ = outbox_create(user=user, mailbox=sink_mailbox, data=ComposeInput(to=("a@client.test",), text="x"))
    sink_mailbox.auth_method = "oauth2"
    sink_mailbox.set_secret({"access_token": "", "expires_at": 0})  # no refresh token: reconnect needed
    sink_mailbox.save()
    report = outbox_send_due()
    row.refresh_from_db()
    assert (report.sent, report.retrying) == (0, 1)
    assert row.state == "retrying" and row.last_error_kind == "auth" and "reconnect" in row.last_smtp_text


# --- the idempotency hash is the one of earlier releases ----------------------------------------------
def test_request_hash_is_unchanged() -> None:
    data = ComposeInput(to=("A <a@x.test>",), cc=("c@x.test",), subject="Sü", text="t", html="<p>h</p>",
                        in_reply_to=3, mode="reply", template="t1", send_at=datetime(2025, 3, 1, tzinfo=UTC),
                        attachments=(AttachmentInput("f.txt", "text/plain", "eA==", True, "cid1"),),
                        idempotency_key="k", relay_to_owner=False, deal=9, auto_submitted="auto-replied")
    expected = dataclasses.asdict(data)
    expected["idempotency_key"] = None
    del expected["reply_to_choice"]  # hashed only when given: requests made before it existed keep their hash
    expected["mailbox"] = 7
    expected["send_at"] = data.send_at.isoformat() if data.send_at else None
    blob = json.dumps(expected, sort_keys=True, default=str, ensure_ascii=False)
    assert data.request_hash(7) == hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()
    assert {f.name for f in dataclasses.fields(ComposeInput)} == set(expected) - {"mailbox"} | {"reply_to_choice"}
    chosen = dataclasses.replace(data, reply_to_choice="from")
    assert chosen.request_hash(7) != data.request_hash(7)
