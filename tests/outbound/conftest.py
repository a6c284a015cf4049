"""A real SMTP server on loopback (aiosmtpd) that records what it accepts and can be told to refuse."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes


@dataclass
class SinkHandler:
    messages: list[Received] = field(default_factory=list)
    reject_rcpt: dict[str, str] = field(default_factory=dict)  # address -> reply line
    data_reply: str | None = None  # e.g. "451 4.3.0 try later"
    sessions: int = 0
    pipelining: bool = False  # advertise PIPELINING (RFC 2920), as Postfix does
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope, hostname: str,
                          responses: list[str]) -> list[str]:
        with self.lock:
            self.sessions += 1
        session.host_name = hostname
        if self.pipelining:
            responses.insert(len(responses) - 1, "250-PIPELINING")
        return responses

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          options: list[str]) -> str:
        reply = self.reject_rcpt.get(address.lower())
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.data_reply:
            return self.data_reply
        with self.lock:
            self.messages.append(Received(envelope.mail_from or "", list(envelope.rcpt_tos),
                                          bytes(envelope.original_content or b"")))
        return "250 2.0.0 queued"


@dataclass
class Sink:
    host: str
    port: int
    handler: SinkHandler
    controller: Any

    @property
    def messages(self) -> list[Received]:
        return self.handler.messages

    def stop(self) -> None:
        self.controller.stop()

    def start(self) -> None:
        self.controller = _controller(self.handler, self.port)
        self.controller.start()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _controller(handler: SinkHandler, port: int) -> Controller:
    return Controller(handler, hostname="127.0.0.1", port=port, decode_data=False, ready_timeout=10.0)


@pytest.fixture
def smtp_sink() -> Iterator[Sink]:
    handler = SinkHandler()
    port = free_port()
    controller = _controller(handler, port)
    controller.start()
    sink = Sink("127.0.0.1", port, handler, controller)
    yield sink
    with contextlib.suppress(AssertionError, RuntimeError):
        sink.controller.stop()


@pytest.fixture
def sink_mailbox(team: Any, smtp_sink: Sink) -> Any:
    from tests.factories import MailboxFactory

    return MailboxFactory(team=team, email="manager@company.test", display_name="Acme Sales",
                          smtp_host=smtp_sink.host, smtp_port=smtp_sink.port, provider_saves_sent=True)


@pytest.fixture
def relay_on(settings: Any) -> None:
    from tests.outbound.relay_mail import RELAY

    settings.MAILROOM_RELAY_DOMAIN = RELAY
    settings.MAILROOM_TRUSTED_AUTHSERV_IDS = ["mx.company.test"]
