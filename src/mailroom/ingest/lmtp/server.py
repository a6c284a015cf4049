"""Mailroom's inbound SMTP/LMTP endpoint for the relay domain (aiosmtpd).

Postfix delivers ``reply+<token>@<relay domain>`` to it (docs/relay.md). Routing uses the SMTP
envelope only. Answers:

* RCPT: ``550`` for an unknown, forged or revoked token (nothing stored); ``451 4.7.1`` when the
  address's or its team's quota (``outbound.relay_quota``, in the database) is used up for now; after
  ``MAILROOM_RELAY_MAX_FAILED_RCPTS`` refused addresses in one session, ``421`` and the connection is
  closed (a prober's failures are his session's, never held against a relay address);
* RCPT beyond ``MAX_RCPTS_PER_MESSAGE`` of one message: ``452 4.5.3`` (the client sends them later);
* DATA: ``250`` only after the raw message (or its hold) is committed and counted; ``451`` on any
  internal failure or a quota used up meanwhile, so the sending MTA retries; with LMTP, one reply per
  accepted recipient.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, Envelope, Session
from django.conf import settings
from django.db import connection

log = logging.getLogger(__name__)

MAX_MESSAGE_SIZE = 50 * 1024 * 1024
TOO_MANY_FAILED = "421 4.7.0 too many unknown relay addresses in this session, closing connection"
# Recipients of one message (RFC 5321 4.5.3.1.8: at least 100); the client sends the rest in another.
MAX_RCPTS_PER_MESSAGE = 100
TOO_MANY_RCPTS = "452 4.5.3 too many recipients for one message, send the others separately"
# Attributes the handler keeps on aiosmtpd's Session (one per connection, gone with it).
_FAILED_RCPTS = "mailroom_failed_rcpts"
_CLOSE = "mailroom_close"


def _db_call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``fn`` in asyncio's worker thread with a connection of its own for this call only: the
    pool's threads outlive the server, and a connection left in one would outlive it too (relay
    mail is not so frequent that reconnecting matters)."""
    try:
        return fn(*args, **kwargs)
    finally:
        connection.close()


def max_failed_rcpts() -> int:
    return max(0, int(settings.MAILROOM_RELAY_MAX_FAILED_RCPTS))


class RelayHandler:
    """Quotas are per relay token and per team, in the database (``outbound.relay_quota``): nothing
    is kept in this process. Refused recipients count per SMTP session only."""

    def __init__(self, *, lmtp: bool = False) -> None:
        self.lmtp = lmtp

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        from mailroom.outbound.relay import relay_check_recipient

        if len(envelope.rcpt_tos) >= MAX_RCPTS_PER_MESSAGE:
            return TOO_MANY_RCPTS
        try:
            reply = await asyncio.to_thread(_db_call, relay_check_recipient, address)
        except Exception:
            log.exception("relay.rcpt_failed")
            return "451 4.3.0 temporary failure, try again later"
        if reply.code >= 500:
            failed = int(getattr(session, _FAILED_RCPTS, 0)) + 1
            setattr(session, _FAILED_RCPTS, failed)
            if failed > max_failed_rcpts():
                log.warning("relay.too_many_failed_rcpts", extra={"peer": str(session.peer), "failed": failed})
                setattr(session, _CLOSE, True)
                return TOO_MANY_FAILED
            return reply.line()
        if reply.code != 250:
            return reply.line()
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        from mailroom.outbound.relay import relay_receive

        raw = envelope.original_content or b""
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        lines: list[str] = []
        for rcpt in envelope.rcpt_tos:
            try:
                reply = await asyncio.to_thread(_db_call, relay_receive, mail_from=envelope.mail_from or "",
                                                rcpt=rcpt, raw=raw)
                lines.append(reply.line())
            except Exception:
                log.exception("relay.store_failed")
                lines.append("451 4.3.0 temporary failure, try again later")
        if self.lmtp:
            return "\r\n".join(lines) if lines else "503 5.5.1 no valid recipients"
        # SMTP has one reply for all recipients: any temporary failure -> 451 (stored ones dedupe on retry).
        for line in lines:
            if line.startswith("4"):
                return line
        if lines and all(line.startswith("5") for line in lines):
            return lines[0]
        return "250 2.0.0 OK"


class RelayController(Controller):
    def __init__(self, handler: RelayHandler, *, hostname: str, port: int) -> None:
        self.relay_handler = handler
        super().__init__(handler, hostname=hostname, port=port, decode_data=False,
                         data_size_limit=MAX_MESSAGE_SIZE, enable_SMTPUTF8=True, ready_timeout=10.0)

    def factory(self) -> SMTP:
        cls = RelayLMTP if self.relay_handler.lmtp else RelaySMTP
        return cls(self.handler, **self.SMTP_kwargs)


class RelaySMTP(SMTP):
    """aiosmtpd's SMTP server, closing the connection after a ``421`` the handler gave at RCPT."""

    async def smtp_RCPT(self, arg: str | None) -> None:
        await super().smtp_RCPT(arg)
        if getattr(self.session, _CLOSE, False) and self.transport is not None:
            self.transport.close()  # after the 421 is written (push drains); the loop then ends


class RelayLMTP(RelaySMTP, LMTP):
    """The same over LMTP (aiosmtpd's LMTP is its SMTP with another greeting and per-recipient DATA)."""


def start_relay_server(*, host: str = "127.0.0.1", port: int = 2525, lmtp: bool = False) -> RelayController:
    controller = RelayController(RelayHandler(lmtp=lmtp), hostname=host, port=port)
    controller.start()
    log.info("relay.listening", extra={"host": host, "port": port, "lmtp": lmtp})
    return controller


def serve(*, host: str, port: int, lmtp: bool, stop_event: threading.Event | None = None) -> None:
    controller = start_relay_server(host=host, port=port, lmtp=lmtp)
    stop = stop_event or threading.Event()
    try:
        while not stop.wait(1.0):
            pass
    finally:
        controller.stop()
