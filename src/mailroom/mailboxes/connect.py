"""Connection settings for a mailbox (secrets decrypted, OAuth2 tokens refreshed) and errors that
say what to fix: DNS, port, TLS or credentials."""

from __future__ import annotations

import errno
import http.client
import json
import re
import socket
import ssl
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

from django.db import transaction

from mailroom.mailboxes.models import Mailbox


class ImapError(Exception):
    """A mailbox problem with a message for humans. ``kind``: dns, connect, tls, auth, folder, fetch,
    protocol, timeout, oauth."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass(frozen=True, slots=True)
class ConnectionSettings:
    host: str
    port: int
    security: str  # ssl / starttls / plain
    username: str
    auth: str  # password / oauth2
    password: str = ""
    access_token: str = ""
    tls_verify: bool = True

    def __repr__(self) -> str:  # never print secrets
        return f"ConnectionSettings({self.host}:{self.port} {self.security} {self.username} {self.auth})"


LOOPBACK = {"127.0.0.1", "::1", "localhost"}
_OAUTH_ERROR = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def describe_socket_error(proto: str, cs: ConnectionSettings, exc: BaseException) -> ImapError:
    where = f"{proto} server {cs.host}:{cs.port}"
    if isinstance(exc, socket.gaierror):
        return ImapError("dns", f"cannot resolve {cs.host!r} ({exc.strerror}): check the {proto} host name.")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return ImapError("tls", f"TLS certificate of {where} is not trusted: {exc.verify_message}.")
    if isinstance(exc, ssl.SSLError):
        hint = (
            "the port probably expects STARTTLS or plain, not SSL/TLS"
            if "WRONG_VERSION_NUMBER" in str(exc) or "wrong version" in str(exc).lower()
            else "check the security mode (SSL/TLS vs STARTTLS) and the port"
        )
        return ImapError("tls", f"TLS handshake with {where} failed ({exc.reason or exc}): {hint}.")
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return ImapError("timeout", f"{where} did not answer in time: check host, port and firewall.")
    if isinstance(exc, ConnectionRefusedError) or getattr(exc, "errno", None) == errno.ECONNREFUSED:
        return ImapError("connect", f"{where} refused the connection: check the port ({cs.port}).")
    if isinstance(exc, OSError) and exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        return ImapError("connect", f"{where} is unreachable: check the host and the network.")
    text = str(exc) or type(exc).__name__
    if "STARTTLS" in text.upper():
        return ImapError("tls", f"{where} does not offer STARTTLS: choose SSL/TLS (port 993/465) instead.")
    return ImapError("connect", f"cannot talk to {where}: {text}")


def validate_security(host: str, security: str, what: str) -> None:
    from mailroom.core.errors import InvalidInput

    if security == Mailbox.Security.PLAIN and host not in LOOPBACK:
        raise InvalidInput(
            f"{what}: plain (unencrypted) connections are only allowed to loopback; use 'ssl' or 'starttls' "
            f"for {host}",
            field=f"{what}_security",
        )


# --- OAuth2 ----------------------------------------------------------------------------------------
def _refresh_access_token(mailbox: Mailbox, secret: dict[str, Any]) -> dict[str, Any]:
    """Refresh the access token; store the new one (and a rotated refresh token) atomically."""
    data = urllib.parse.urlencode(
        {
            "grant_type": "refresh_token",
            "refresh_token": secret["refresh_token"],
            "client_id": secret.get("client_id", ""),
            "client_secret": secret.get("client_secret", ""),
        }
    ).encode()
    from mailroom.core import netguard

    try:
        resp = netguard.post_form(secret["token_url"], data)
    except netguard.BlockedURL as exc:
        raise ImapError("oauth", f"OAuth2 token endpoint refused: {exc}.") from exc
    except (OSError, http.client.HTTPException) as exc:
        raise ImapError("oauth", f"OAuth2 token refresh failed: cannot reach the token endpoint ({type(exc).__name__}).") from exc
    # What the server said is never shown (it could be anything the URL points at): its status and its
    # OAuth ``error`` code only.
    try:
        payload = json.loads(resp.body)
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        raise ImapError("oauth", f"OAuth2 token refresh failed: the token endpoint answered HTTP {resp.status} without a JSON token.")
    code = payload.get("error")
    if resp.status != 200 or not isinstance(payload.get("access_token"), str):
        detail = f" ({code})" if isinstance(code, str) and _OAUTH_ERROR.fullmatch(code) else ""
        raise ImapError("oauth", f"OAuth2 token refresh failed: HTTP {resp.status}{detail}; reconnect the mailbox.")
    if mailbox.pk is None:  # not stored yet (a connection test before saving): the new token stays here
        current = {**secret, "access_token": payload["access_token"],
                   "expires_at": time.time() + float(payload.get("expires_in", 3600))}
        if payload.get("refresh_token"):
            current["refresh_token"] = payload["refresh_token"]
        mailbox.set_secret(current)
        return current
    with transaction.atomic():
        locked = Mailbox.objects.select_for_update().get(pk=mailbox.pk)
        current = locked.get_secret()
        current["access_token"] = payload["access_token"]
        current["expires_at"] = time.time() + float(payload.get("expires_in", 3600))
        if payload.get("refresh_token"):  # rotated: must never be lost
            current["refresh_token"] = payload["refresh_token"]
        locked.set_secret(current)
        locked.save(update_fields=["secret_enc", "updated_at"])
    mailbox.secret_enc = locked.secret_enc
    return current


def _secret_with_fresh_token(mailbox: Mailbox) -> dict[str, Any]:
    secret = mailbox.get_secret()
    if mailbox.auth_method == Mailbox.Auth.OAUTH2 and (
        not secret.get("access_token") or float(secret.get("expires_at", 0)) < time.time() + 60
    ):
        if not secret.get("refresh_token") or not secret.get("token_url"):
            raise ImapError("oauth", "OAuth2 mailbox has no valid access token and no refresh token: reconnect it.")
        secret = _refresh_access_token(mailbox, secret)
    return secret


def imap_settings(mailbox: Mailbox) -> ConnectionSettings:
    secret = _secret_with_fresh_token(mailbox)
    return ConnectionSettings(
        host=mailbox.imap_host,
        port=mailbox.imap_port,
        security=mailbox.imap_security,
        username=mailbox.imap_username or mailbox.email,
        auth=mailbox.auth_method,
        password=secret.get("password", ""),
        access_token=secret.get("access_token", ""),
        tls_verify=mailbox.tls_verify,
    )


def smtp_settings(mailbox: Mailbox) -> ConnectionSettings:
    secret = _secret_with_fresh_token(mailbox)
    return ConnectionSettings(
        host=mailbox.smtp_host or mailbox.imap_host,
        port=mailbox.smtp_port,
        security=mailbox.smtp_security,
        username=mailbox.smtp_username or mailbox.imap_username or mailbox.email,
        auth=mailbox.auth_method,
        password=secret.get("smtp_password", secret.get("password", "")),
        access_token=secret.get("access_token", ""),
        tls_verify=mailbox.tls_verify,
    )
