"""Guarded IMAP APPEND of sent mail to the mailbox's Sent folder.

Guard: before appending we search the folder for the Message-ID (``UID SEARCH HEADER Message-ID
<id>``); a copy already there (an earlier attempt that crashed before recording, or the provider
filing it) is recorded as appended and not appended again. The caller records the result per row.
No database work here.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError

from mailroom.outbound.smtp import is_loopback

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ImapSettings:
    host: str
    port: int
    security: str
    username: str
    auth_method: str = "password"
    password: str = field(default="", repr=False)
    access_token: str = field(default="", repr=False)
    tls_verify: bool = True
    timeout: float = 30.0


@dataclass(frozen=True, slots=True)
class AppendItem:
    key: int  # outbox row id
    message_id: str  # without angle brackets
    raw: bytes
    date: datetime | None = None


@dataclass(frozen=True, slots=True)
class AppendResult:
    key: int
    ok: bool
    already_there: bool = False
    error: str = ""


def imap_settings_for_mailbox(mailbox: Any) -> ImapSettings:
    """Through :func:`mailroom.mailboxes.connect.imap_settings` (secrets, OAuth2 refresh)."""
    from mailroom.mailboxes.connect import imap_settings

    cs = imap_settings(mailbox)
    return ImapSettings(
        host=cs.host,
        port=int(cs.port),
        security=cs.security,
        username=cs.username,
        auth_method=cs.auth,
        password=cs.password,
        access_token=cs.access_token,
        tls_verify=bool(cs.tls_verify),
    )


def connect(s: ImapSettings) -> IMAPClient:
    ctx = ssl.create_default_context()
    if not s.tls_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if s.security == "plain" and not is_loopback(s.host):
        raise IMAPClientError("plain IMAP (no TLS) is allowed on loopback only")
    client = IMAPClient(s.host, port=s.port, ssl=s.security == "ssl", ssl_context=ctx, timeout=s.timeout)
    if s.security == "starttls":
        client.starttls(ctx)
    if s.auth_method == "oauth2" and s.access_token:
        client.oauth2_login(s.username, s.access_token)
    else:
        client.login(s.username, s.password)
    return client


def find_sent_folder(client: IMAPClient, preferred: str | None) -> str:
    if preferred:
        return preferred
    found = client.find_special_folder(b"\\Sent")
    if found:
        return str(found)
    for name in ("Sent", "Sent Items", "Sent Messages", "INBOX.Sent"):
        if client.folder_exists(name):
            return name
    client.create_folder("Sent")
    return "Sent"


def message_in_folder(client: IMAPClient, message_id: str) -> bool:
    uids = client.search(["HEADER", "Message-ID", f"<{message_id}>"])
    return bool(uids)


def append_guarded(settings: ImapSettings, folder: str | None, items: Sequence[AppendItem]) -> list[AppendResult]:
    """Append each item unless a message with its Message-ID is already in the Sent folder."""
    results: list[AppendResult] = []
    if not items:
        return results
    try:
        client = connect(settings)
    except (IMAPClientError, OSError) as exc:
        return [AppendResult(i.key, False, error=f"{type(exc).__name__}: {exc}") for i in items]
    try:
        name = find_sent_folder(client, folder)
        client.select_folder(name, readonly=True)
        for item in items:
            try:
                if message_in_folder(client, item.message_id):
                    results.append(AppendResult(item.key, True, already_there=True))
                    continue
                client.append(name, item.raw, flags=[b"\\Seen"], msg_time=item.date)
                results.append(AppendResult(item.key, True))
            except (IMAPClientError, OSError) as exc:
                results.append(AppendResult(item.key, False, error=f"{type(exc).__name__}: {exc}"))
                if isinstance(exc, OSError):
                    break
    except (IMAPClientError, OSError) as exc:
        done = {r.key for r in results}
        results.extend(AppendResult(i.key, False, error=f"{type(exc).__name__}: {exc}") for i in items if i.key not in done)
    finally:
        with contextlib.suppress(IMAPClientError, OSError):
            client.logout()
    done = {r.key for r in results}
    results.extend(AppendResult(i.key, False, error="not attempted (connection lost)") for i in items if i.key not in done)
    return results
