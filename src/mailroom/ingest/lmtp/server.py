"""Mailroom's inbound SMTP/LMTP endpoint for the relay domain (aiosmtpd).

Postfix delivers ``reply+<token>@<relay domain>`` to it (docs/relay.md). Routing uses the SMTP
envelope only. Answers:

* RCPT: ``550`` for an unknown, forged or revoked token (nothing stored); ``451`` when rate-limited;
* DATA: ``250`` only after the raw message (or its hold) is committed; ``451`` on any internal
  failure, so the sending MTA retries; with LMTP, one reply per accepted recipient.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, Envelope, Session
from django.db import connection

log = logging.getLogger(__name__)

MAX_MESSAGE_SIZE = 50 * 1024 * 1024


class RateLimiter:
    """Sliding window per key (sender, relay address): at most ``limit`` messages per ``window`` s."""

    def __init__(self, limit: int = 30, window: float = 600.0) -> None:
        self.limit = limit
        self.window = window
        self._hits: dict[tuple[str, str], deque[float]] = {}
        self._lock = threading.Lock()

    def allow(self, key: tuple[str, str]) -> bool:
        now = time.monotonic()
        with self._lock:
            q = self._hits.setdefault(key, deque())
            while q and q[0] < now - self.window:
                q.popleft()
            if len(q) >= self.limit:
                return False
            q.append(now)
            return True


def _db_call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``fn`` in asyncio's worker thread with a connection of its own for this call only: the
    pool's threads outlive the server, and a connection left in one would outlive it too (relay
    mail is not so frequent that reconnecting matters)."""
    try:
        return fn(*args, **kwargs)
    finally:
        connection.close()


class RelayHandler:
    def __init__(self, *, lmtp: bool = False, rate_limiter: RateLimiter | None = None) -> None:
        self.lmtp = lmtp
        self.rate = rate_limiter or RateLimiter()

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        from mailroom.outbound.relay import relay_check_recipient

        try:
            reply = await asyncio.to_thread(_db_call, relay_check_recipient, address)
        except Exception:
            log.exception("relay.rcpt_failed")
            return "451 4.3.0 temporary failure, try again later"
        if reply.code != 250:
            return reply.line()
        sender = (envelope.mail_from or "").lower()
        if not self.rate.allow((sender, address.lower())):
            return "451 4.7.1 too many messages from this sender to this address, try again later"
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
        cls = LMTP if self.relay_handler.lmtp else SMTP
        return cls(self.handler, **self.SMTP_kwargs)


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
