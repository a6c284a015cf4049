"""Relay test mail: an offer sent from the CRM, a client's reply to its relay address."""

from __future__ import annotations

from typing import Any

from mailroom.outbound.models import OutboxMessage
from mailroom.outbound.services import ComposeInput, outbox_create

RELAY = "relay.company.test"


def reply_mail(token_addr: str, *, sender: str = "client@client.test", mid: str = "reply1@client.test",
               extra: str = "", in_reply_to: str = "") -> bytes:
    return (
        f"From: Client <{sender}>\r\nTo: {token_addr}\r\nSubject: Re: Hello\r\n"
        f"Date: Sat, 01 Mar 2025 10:00:00 +0000\r\nMessage-ID: <{mid}>\r\n"
        + (f"In-Reply-To: <{in_reply_to}>\r\n" if in_reply_to else "")
        + extra + "\r\nThanks, sounds good.\r\n"
    ).encode()


def sent_offer(user: Any, mailbox: Any, **kw: Any) -> OutboxMessage:
    row, _ = outbox_create(user=user, mailbox=mailbox, data=ComposeInput(
        to=("Client <client@client.test>",), subject="Hello", text="Offer", **kw))
    return row
