"""SMTP submission through the mailbox's own server, one reused connection per mailbox and batch.

Failures are classified by where they came from (ARCHITECTURE.md rule 8):

* 4xx replies, timeouts, dropped or refused connections -> ``retry`` (jittered exponential backoff);
* 5xx on RCPT for every recipient, 5xx on MAIL FROM or after DATA -> ``failed``, with the server's words;
* 5xx on some recipients only -> ``sent`` for the others, the refused ones recorded per recipient.

This module does no database work: it takes plain values and returns :class:`SendResult`, so the
outbox can run several mailboxes' connections in threads and write the results in one transaction.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import random
import smtplib
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

log = logging.getLogger(__name__)

Outcome = Literal["sent", "retry", "failed"]


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    host: str
    port: int
    security: str  # "ssl" | "starttls" | "plain"
    username: str = ""
    auth_method: str = "password"  # "password" | "oauth2"
    password: str = field(default="", repr=False)
    access_token: str = field(default="", repr=False)
    tls_verify: bool = True
    timeout: float = 30.0
    local_hostname: str | None = None


@dataclass(frozen=True, slots=True)
class SendResult:
    outcome: Outcome
    code: int | None = None
    text: str = ""
    kind: str = ""  # "", partial, rcpt_rejected, sender_rejected, data_rejected, temporary, timeout, dropped, connect, auth, config
    refused: dict[str, tuple[int, str]] = field(default_factory=dict)


def settings_for_mailbox(mailbox: Any, *, timeout: float = 30.0) -> SmtpSettings:
    """SMTP settings through :func:`mailroom.mailboxes.connect.smtp_settings`, the one place that
    decrypts secrets and refreshes an expired OAuth2 access token (storing a rotated refresh token
    atomically). Raises ``ImapError(kind="oauth")`` when no valid token can be had."""
    from mailroom.mailboxes.connect import smtp_settings

    cs = smtp_settings(mailbox)
    return SmtpSettings(
        host=cs.host,
        port=int(cs.port),
        security=cs.security,
        username=cs.username,
        auth_method=cs.auth,
        password=cs.password,
        access_token=cs.access_token,
        tls_verify=bool(cs.tls_verify),
        timeout=timeout,
    )


def backoff_seconds(attempt: int, *, base: float = 30.0, cap: float = 3600.0) -> float:
    """Full-jitter-ish exponential backoff: base * 2^(attempt-1), capped, times U(0.5, 1.5)."""
    delay = min(cap, base * (2 ** max(0, attempt - 1)))
    return delay * random.uniform(0.5, 1.5)


def is_loopback(host: str) -> bool:
    if host.lower() in {"localhost", "localhost.localdomain"}:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _plain_crlf(raw: bytes) -> bool:
    """Every line ends in CRLF (no bare CR or LF): the body can be dot-stuffed as it is."""
    crlf = raw.count(b"\r\n")
    return raw.count(b"\n") == crlf and raw.count(b"\r") == crlf


class ConfigError(RuntimeError):
    pass


class Submitter:
    """One SMTP connection for a mailbox, opened lazily and reused across messages of a batch.

    After any error that leaves the protocol state unknown the connection is dropped and the
    next message opens a new one.
    """

    def __init__(self, settings: SmtpSettings) -> None:
        self.settings = settings
        self._smtp: smtplib.SMTP | None = None
        self.connections_opened = 0

    # -- connection -------------------------------------------------------------------------------
    def _context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        if not self.settings.tls_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def _connect(self) -> smtplib.SMTP:
        s = self.settings
        smtp: smtplib.SMTP
        if s.security == "ssl":
            smtp = smtplib.SMTP_SSL(s.host, s.port, timeout=s.timeout, context=self._context(),
                                    local_hostname=s.local_hostname)
        else:
            if s.security == "plain" and not is_loopback(s.host):
                raise ConfigError("plain SMTP (no TLS) is allowed on loopback only: use SSL or STARTTLS")
            smtp = smtplib.SMTP(s.host, s.port, timeout=s.timeout, local_hostname=s.local_hostname)
            smtp.ehlo()
            if s.security == "starttls":
                smtp.starttls(context=self._context())
                smtp.ehlo()
        if s.auth_method == "oauth2" and s.access_token:
            token = f"user={s.username}\x01auth=Bearer {s.access_token}\x01\x01"
            smtp.ehlo_or_helo_if_needed()
            smtp.auth("XOAUTH2", lambda challenge=None: token, initial_response_ok=True)
        elif s.password and (s.security != "plain" or smtp.has_extn("auth")):
            smtp.login(s.username, s.password)
        self.connections_opened += 1
        return smtp

    def close(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is None:
            return
        try:
            smtp.quit()
        except (smtplib.SMTPException, OSError):
            with contextlib.suppress(OSError):
                smtp.close()

    def _drop(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            with contextlib.suppress(OSError):
                smtp.close()

    def __enter__(self) -> Submitter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- sending ----------------------------------------------------------------------------------
    def send(self, mail_from: str, recipients: Sequence[str], raw: bytes) -> SendResult:
        try:
            if self._smtp is None:
                self._smtp = self._connect()
            if self._smtp.has_extn("pipelining") and _plain_crlf(raw):
                return self._send_pipelined(self._smtp, mail_from, list(recipients), raw)
            refused = self._smtp.sendmail(mail_from, list(recipients), raw)
        except smtplib.SMTPRecipientsRefused as exc:
            # Every recipient refused; smtplib has sent RSET, the connection is still usable.
            details = {a: (int(c), _text(t)) for a, (c, t) in exc.recipients.items()}
            return self._classify_refused(details, all_refused=True)
        except smtplib.SMTPSenderRefused as exc:
            return self._reply(exc.smtp_code, exc.smtp_error, "sender_rejected")
        except smtplib.SMTPDataError as exc:
            self._drop()
            return self._reply(exc.smtp_code, exc.smtp_error, "data_rejected")
        except smtplib.SMTPAuthenticationError as exc:
            self._drop()
            return SendResult("retry", exc.smtp_code, _text(exc.smtp_error), "auth")
        except smtplib.SMTPServerDisconnected as exc:
            self._drop()
            return SendResult("retry", None, f"connection dropped: {exc}", "dropped")
        except smtplib.SMTPResponseException as exc:
            self._drop()
            return self._reply(exc.smtp_code, exc.smtp_error, "temporary")
        except ConfigError as exc:
            self._drop()
            return SendResult("retry", None, str(exc), "config")
        except TimeoutError as exc:
            self._drop()
            return SendResult("retry", None, f"timeout: {exc}", "timeout")
        except (ConnectionError, OSError, smtplib.SMTPException) as exc:
            self._drop()
            kind = "connect" if isinstance(exc, ConnectionRefusedError) else "dropped"
            return SendResult("retry", None, f"{type(exc).__name__}: {exc}", kind)
        if refused:
            details = {a: (int(c), _text(t)) for a, (c, t) in refused.items()}
            return SendResult("sent", 250, "accepted for some recipients", "partial", details)
        return SendResult("sent", 250, "accepted")

    def _send_pipelined(self, smtp: smtplib.SMTP, mail_from: str, recipients: list[str], raw: bytes) -> SendResult:
        """RFC 2920: MAIL, every RCPT and DATA in one write, the replies read in order; then the
        dot-stuffed body. One round trip instead of 2 + recipients, and no regex pass over the body
        (smtplib's ``data()`` runs two). Same outcomes as the ``sendmail`` path."""
        opts = f" SIZE={len(raw)}" if smtp.has_extn("size") else ""
        smtp.send("".join([f"MAIL FROM:<{mail_from}>{opts}\r\n", *(f"RCPT TO:<{r}>\r\n" for r in recipients),
                           "DATA\r\n"]).encode("ascii"))
        mail_code, mail_text = smtp.getreply()
        refused: dict[str, tuple[int, str]] = {}
        for r in recipients:
            code, text = smtp.getreply()
            if code not in (250, 251):
                refused[r] = (code, _text(text))
        data_code, data_text = smtp.getreply()
        if mail_code != 250 or len(refused) == len(recipients) or data_code != 354:
            if data_code == 354:  # the server wants a body although nothing can be delivered: end it empty
                smtp.send(b".\r\n")
                smtp.getreply()
            if mail_code != 250:
                smtp.rset()
                return self._reply(mail_code, mail_text, "sender_rejected")
            if len(refused) == len(recipients):
                smtp.rset()
                return self._classify_refused(refused, all_refused=True)
            self._drop()
            return self._reply(data_code, data_text, "data_rejected")
        body = raw.replace(b"\r\n.", b"\r\n..")
        if body.startswith(b"."):
            body = b"." + body
        if not body.endswith(b"\r\n"):
            body += b"\r\n"
        smtp.send(body + b".\r\n")
        code, text = smtp.getreply()
        if code != 250:
            self._drop()
            return self._reply(code, text, "data_rejected")
        if refused:
            return SendResult("sent", 250, "accepted for some recipients", "partial", refused)
        return SendResult("sent", 250, "accepted")

    @staticmethod
    def _reply(code: int, text: bytes | str, kind: str) -> SendResult:
        outcome: Outcome = "failed" if 500 <= int(code) < 600 else "retry"
        return SendResult(outcome, int(code), _text(text), kind)

    @staticmethod
    def _classify_refused(details: dict[str, tuple[int, str]], *, all_refused: bool) -> SendResult:
        temporary = {a: v for a, v in details.items() if v[0] < 500}
        code, text = next(iter(details.values())) if details else (550, "recipients refused")
        if temporary:
            code, text = next(iter(temporary.values()))
            return SendResult("retry", code, text, "temporary", details)
        return SendResult("failed", code, text, "rcpt_rejected", details)
