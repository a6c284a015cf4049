"""Who sent it, end to end: mail synced from a real Dovecot, DKIM verified by Mailroom itself in the
parse workers with the keys served by a DNS server on loopback, threaded only on evidence an
attacker cannot copy, and a reply from the CRM to a forged Reply-To needing the user's choice.

Anna writes from acme.test, which signs its mail. A forger writes with her From: unsigned, signed
by his own domain, or signed with a body length and his text appended; each answers her real
message and asks for replies to go to him. Only her signed mail, and her unsigned answer to our own
message (the decision for providers without DKIM), join the real thread."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import dkim
import pytest
from django.test import Client
from tests.ingest.helpers import mailbox_for
from tests.parsing.test_authn import make_key

from mailroom.conversations.models import Message, Participant, Thread
from mailroom.conversations.pipeline import drain
from mailroom.core.tokens import make_message_id
from mailroom.ingest.imap.worker import mailbox_sync_once
from mailroom.outbound.models import OutboxMessage
from mailroom.testing.dns import LoopbackDns, loopback_dns

pytestmark = [pytest.mark.django_db, pytest.mark.e2e]

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


ACME, EVIL = make_key(), make_key()


@pytest.fixture
def dns(settings: Any) -> Iterator[LoopbackDns]:
    with loopback_dns({"sel._domainkey.acme.test": [ACME[1]], "sel._domainkey.evil.test": [EVIL[1]]}) as server:
        settings.MAILROOM_DKIM_VERIFY = True
        settings.MAILROOM_DNS_SERVERS = [server.server]
        settings.MAILROOM_DNS_TIMEOUT = 2.0
        yield server


def _mail(mid: str, to: str, hours: int, *, irt: str | None = None, reply_to: str | None = None,
          body: str = "Hello.", frm: str = "Anna <anna@acme.test>", subject: str = "Re: Order 7781") -> bytes:
    lines = [f"From: {frm}", f"To: {to}", f"Subject: {subject}", f"Date: {format_datetime(T0 + timedelta(hours=hours))}",
             f"Message-ID: <{mid}>"]
    if irt:
        lines += [f"In-Reply-To: <{irt}>", f"References: <{irt}>"]
    if reply_to:
        lines.append(f"Reply-To: {reply_to}")
    lines += ["MIME-Version: 1.0", "Content-Type: text/plain; charset=utf-8", "", body, ""]
    return "\r\n".join(lines).encode()


def _sign(raw: bytes, key: tuple[bytes, bytes], domain: str, *, length: bool = False) -> bytes:
    headers = [b"from", b"to", b"subject", b"date", b"message-id", b"in-reply-to", b"references", b"reply-to"]
    return dkim.sign(raw, b"sel", domain.encode(), key[0], include_headers=headers, length=length) + raw


def _rules(m: Message) -> list[str]:
    assert m.routing is not None
    return [r["rule"] for r in m.routing["thread"]["rules"]]


def test_only_evidence_an_attacker_cannot_copy_threads_a_reply(
    mail_user: Any, team: Any, api_client: Client, dns: LoopbackDns
) -> None:
    user = mail_user()
    mailbox = mailbox_for(user, team=team)
    me = mailbox.email
    user.deliver(_sign(_mail("a1@acme.test", me, 0, subject="Order 7781"), ACME, "acme.test"))
    mailbox_sync_once(mailbox)
    drain()
    a1 = Message.objects.get(message_id="a1@acme.test")
    assert a1.auth == {"dkim": "pass", "dkim_domains": ["acme.test"], "dmarc": "pass", "spf": "none",
                       "source": "dkim", "authserv_id": ""}
    thread = a1.thread_id
    ours = make_message_id(thread_id=thread, domain="company.test")
    user.deliver(_mail(ours, "anna@acme.test", 1, irt="a1@acme.test", frm=f"Manager <{me}>"), "Sent")

    attacker = "Anna <pay@evil.test>"
    user.deliver(_mail("x1@evil.test", me, 2, irt="a1@acme.test", reply_to=attacker, body="New bank account."))
    user.deliver(_sign(_mail("x2@evil.test", me, 3, irt="a1@acme.test", reply_to=attacker), EVIL, "evil.test"))
    user.deliver(_sign(_mail("x3@evil.test", me, 4, irt="a1@acme.test", reply_to=attacker), ACME, "acme.test",
                       length=True) + b"PS: pay to the new account.\r\n")
    user.deliver(_sign(_mail("a2@acme.test", me, 5, irt="a1@acme.test", reply_to="sales@acme.test"), ACME, "acme.test"))
    user.deliver(_mail("a3@acme.test", me, 6, irt=ours, body="Unsigned, from her phone."))
    mailbox_sync_once(mailbox)
    drain()

    msgs = {m.message_id: m for m in Message.objects.filter(team=team)}
    assert {mid: m.state for mid, m in msgs.items()} == {mid: "linked" for mid in msgs}
    assert {mid for mid, m in msgs.items() if m.thread_id == thread} == {"a1@acme.test", ours, "a2@acme.test", "a3@acme.test"}
    assert dns.queries == ["sel._domainkey.acme.test."]  # looked up once (cached in the worker); evil.test never

    # Verified by her domain's signature; unsigned but answering our message: accepted, said so.
    assert _rules(msgs["a2@acme.test"])[-1] == "sender_verified"
    assert msgs["a2@acme.test"].routing["thread"]["rules"][-1]["reason"] == "DMARC pass"  # type: ignore[index]
    assert (_rules(msgs["a3@acme.test"])[-1], msgs["a3@acme.test"].routing["thread"]["flags"]) == (  # type: ignore[index]
        "sender_unauthenticated", ["unauthenticated"])

    # The forgeries: each held for review in a thread of its own, on no contact's card.
    # Signatures that cannot speak for acme.test (another domain's, one with l=) are not even tried.
    for mid, auth in (("x1@evil.test", ("none", [])), ("x2@evil.test", ("none", [])),
                      ("x3@evil.test", ("none", []))):
        forged = msgs[mid]
        assert (forged.auth["dkim"], forged.auth["dkim_domains"], forged.auth["dmarc"]) == (*auth, "none")  # type: ignore[index]
        t = Thread.objects.get(pk=forged.thread_id)
        assert (t.verification, t.claimed_thread_id) == ("unverified", thread)
        assert _rules(forged)[0] == "unverified_sender"
        assert list(Participant.objects.filter(message=forged).exclude(contact=None)) == []

    # The reader is warned; a reply from the CRM must choose between From and the forged Reply-To.
    x1 = msgs["x1@evil.test"]
    detail = api_client.get(f"/api/v1/messages/{x1.pk}").json()
    assert [w["code"] for w in detail["warnings"]] == ["unverified", "reply_to_differs"]
    assert detail["warnings"][1]["message"] == (
        "Reply-To pay@evil.test differs from From anna@acme.test and the sender is not authenticated: "
        "a reply must choose one (reply_to_choice: from or reply_to)"
    )
    body = {"mailbox": mailbox.pk, "mode": "reply", "in_reply_to": x1.pk, "text": "Which account?"}
    refused = api_client.post("/api/v1/outbox", json.dumps(body), content_type="application/json")
    assert refused.status_code == 400
    assert refused.json()["detail"] == (
        "reply_to_choice: the message answered is not authenticated and its Reply-To (pay@evil.test) differs "
        "from its From (anna@acme.test): choose from or reply_to"
    )
    assert not OutboxMessage.objects.exists()
    chosen = api_client.post("/api/v1/outbox", json.dumps({**body, "reply_to_choice": "from"}),
                             content_type="application/json")
    assert chosen.status_code == 201, chosen.content
    assert OutboxMessage.objects.get().recipients == ["anna@acme.test"]
    # Her own signed Reply-To is believed without a question.
    a2 = msgs["a2@acme.test"]
    assert api_client.get(f"/api/v1/messages/{a2.pk}").json()["warnings"] == []
    signed = api_client.post("/api/v1/outbox", json.dumps({**body, "in_reply_to": a2.pk}), content_type="application/json")
    assert signed.status_code == 201, signed.content
    assert OutboxMessage.objects.get(reply_to_message=a2).recipients == ["sales@acme.test"]
    assert [w["code"] for w in api_client.get(f"/api/v1/messages/{msgs['a3@acme.test'].pk}").json()["warnings"]] == [
        "unauthenticated"]
