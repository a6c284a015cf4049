"""Mailbox writes and the connection test."""

from __future__ import annotations

import smtplib
import ssl
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import transaction

from mailroom.accounts.models import Team
from mailroom.core.errors import Conflict, InvalidInput
from mailroom.core.text import check_text
from mailroom.mailboxes import validation
from mailroom.mailboxes.connect import (
    LOOPBACK,
    ConnectionSettings,
    ImapError,
    describe_socket_error,
    smtp_settings,
    validate_security,
)
from mailroom.mailboxes.models import Mailbox
from mailroom.mailboxes.presets import PRESETS

SECRET_FIELDS = ("password", "smtp_password", "access_token", "refresh_token", "client_id", "client_secret", "token_url", "expires_at")


def _apply_preset(data: dict[str, Any]) -> dict[str, Any]:
    preset = PRESETS.get(data.get("provider") or "generic")
    if preset is None:
        return data
    defaults = {
        "imap_host": preset.imap_host, "imap_port": preset.imap_port, "imap_security": preset.imap_security,
        "smtp_host": preset.smtp_host, "smtp_port": preset.smtp_port, "smtp_security": preset.smtp_security,
        "provider_saves_sent": preset.provider_saves_sent,
    }
    return {**defaults, **{k: v for k, v in data.items() if v not in (None, "")}}


# Where a stored secret goes: change any of these and the secret must be given again (it never follows
# a changed server, port, security mode, certificate check or login name).
CONNECTION_FIELDS = ("imap_host", "imap_port", "imap_security", "imap_username", "smtp_host", "smtp_port",
                     "smtp_security", "smtp_username", "tls_verify", "auth_method")
CREDENTIAL_FIELDS = ("password", "smtp_password", "access_token", "refresh_token")


def _normalise(mb: Mailbox) -> None:
    """Every field that reaches an IMAP/SMTP dialogue or a header, checked and in its wire form."""
    mb.email = validation.address(mb.email, "email")
    for f in ("imap_host", "smtp_host", "message_id_domain"):
        value = getattr(mb, f)
        if value:
            setattr(mb, f, validation.hostname(value, f))
    for f in ("name", "display_name", "imap_username", "smtp_username"):
        validation.no_control(getattr(mb, f) or "", f)
    if not mb.tls_verify and not settings.MAILROOM_ALLOW_INSECURE_TLS:
        for what in ("imap", "smtp"):
            host = getattr(mb, f"{what}_host") or mb.imap_host
            if host not in LOOPBACK:
                raise InvalidInput(
                    f"tls_verify: certificate checks can only be turned off for loopback hosts, not {host} "
                    "(the server's administrator can allow it with MAILROOM_ALLOW_INSECURE_TLS)",
                    field="tls_verify",
                )


def _validate(mb: Mailbox) -> None:
    _normalise(mb)
    if not mb.imap_host:
        raise InvalidInput("imap_host is required (or choose a provider preset: gmail, microsoft, yandex, mailru)", field="imap_host")
    if mb.provider not in Mailbox.Provider.values:
        raise InvalidInput(f"unknown provider {mb.provider!r}; one of {', '.join(Mailbox.Provider.values)}", field="provider")
    for what in ("imap", "smtp"):
        sec = getattr(mb, f"{what}_security")
        if sec not in Mailbox.Security.values:
            raise InvalidInput(f"{what}_security must be one of ssl, starttls, plain", field=f"{what}_security")
        host = getattr(mb, f"{what}_host") or mb.imap_host
        validate_security(host, sec, what)
    for what in ("imap_port", "smtp_port"):
        port = getattr(mb, what)
        if not (0 < int(port) < 65536):
            raise InvalidInput(f"{what} must be between 1 and 65535", field=what)
    if mb.auth_method not in Mailbox.Auth.values:
        raise InvalidInput("auth_method must be 'password' or 'oauth2'", field="auth_method")
    bad_roles = set(mb.roles) - set(("inbox", "sent", "archive", "all", "drafts", "junk", "trash"))
    if bad_roles:
        raise InvalidInput(f"unknown folder roles {sorted(bad_roles)}", field="sync_roles")


def _check_token_url(url: str) -> None:
    """The token endpoint's form (its addresses are checked at each request: DNS can change)."""
    parts = urllib.parse.urlsplit(url) if url.isascii() and not any(ord(c) <= 32 for c in url) else None
    loopback_http = (
        settings.MAILROOM_ALLOW_LOOPBACK_HTTP and parts is not None and parts.scheme == "http"
        and (parts.hostname or "") in LOOPBACK
    )
    if parts is None or not parts.hostname or (parts.scheme != "https" and not loopback_http):
        raise InvalidInput("token_url must be an https:// URL of the provider's OAuth2 token endpoint", field="token_url")


def _check_texts(data: dict[str, Any]) -> None:
    """Every text given (the CLI's too, secrets included): storable, one line, no control character."""
    for key, value in data.items():
        for item in value if isinstance(value, list | tuple) else [value]:
            if isinstance(item, str):
                check_text(item, key)


def mailbox_build(*, team: Team, email: str, name: str = "", **data: Any) -> Mailbox:
    """The mailbox ``mailbox_create`` would store, validated, with its secret, but not saved (nothing
    is written: a connection test can run on it first). ``team`` may be unsaved too."""
    _check_texts({"email": email, "name": name, **data})
    email = validation.address(email, "email")
    if team.pk is not None and Mailbox.objects.filter(team=team, email=email).exists():
        raise Conflict(f"mailbox {email} is already connected", field="email")
    secret = {k: data.pop(k) for k in SECRET_FIELDS if data.get(k) not in (None, "")}
    for k in SECRET_FIELDS:
        data.pop(k, None)
    preset = PRESETS.get(data.get("provider") or "generic")
    if data.get("auth_method") == Mailbox.Auth.OAUTH2 and not secret.get("token_url") and preset and preset.token_url:
        secret["token_url"] = preset.token_url
    if secret.get("token_url"):
        _check_token_url(secret["token_url"])
    data = _apply_preset(data)
    data.setdefault("imap_username", email)
    data.setdefault("smtp_username", data.get("imap_username") or email)
    data.setdefault("sync_roles", ["inbox", "sent"])
    fields = {f.name for f in Mailbox._meta.get_fields()}
    unknown = set(data) - fields
    if unknown:
        raise InvalidInput(f"unknown mailbox fields: {', '.join(sorted(unknown))}")
    mb = Mailbox(team=team, email=email, name=name or email, **data)
    if mb.auth_method == Mailbox.Auth.PASSWORD and not secret.get("password"):
        raise InvalidInput("password is required (an app password for Gmail, Yandex and Mail.ru)", field="password")
    if mb.auth_method == Mailbox.Auth.OAUTH2 and not (secret.get("access_token") or secret.get("refresh_token")):
        raise InvalidInput("oauth2 needs access_token or refresh_token (+ token_url, client_id)", field="refresh_token")
    _validate(mb)
    mb.set_secret(secret)
    return mb


@transaction.atomic
def mailbox_create(*, team: Team, email: str, name: str = "", **data: Any) -> Mailbox:
    mb = mailbox_build(team=team, email=email, name=name, **data)
    mb.save()
    return mb


@transaction.atomic
def mailbox_update(*, mailbox: Mailbox, **data: Any) -> Mailbox:
    _check_texts(data)
    secret_changes = {k: data.pop(k) for k in SECRET_FIELDS if k in data}
    before = {f: getattr(mailbox, f) for f in CONNECTION_FIELDS}
    for k, v in data.items():
        if v is None:
            continue
        if not hasattr(mailbox, k) or k in {"id", "team", "team_id", "secret_enc", "health"}:
            raise InvalidInput(f"field {k!r} cannot be changed", field=k)
        setattr(mailbox, k, v)
    _validate(mailbox)
    moved = [f for f in CONNECTION_FIELDS if getattr(mailbox, f) != before[f]]
    given = {k: v for k, v in secret_changes.items() if v not in (None, "")}
    if given.get("token_url"):
        _check_token_url(given["token_url"])
    if moved:
        # The stored secret is never sent to a changed server: the request carries it again, and it
        # replaces the whole stored secret (no old SMTP password or token follows either).
        if not any(given.get(k) for k in CREDENTIAL_FIELDS):
            needed = "refresh_token or access_token" if mailbox.auth_method == Mailbox.Auth.OAUTH2 else "password"
            raise InvalidInput(
                f"changing {', '.join(moved)} needs the {needed} again: a stored secret is never sent to "
                "a changed server",
                field=needed.split(" ")[0],
            )
        mailbox.set_secret(given)
    elif given:
        secret = mailbox.get_secret()
        secret.update(given)
        mailbox.set_secret(secret)
    if secret_changes or moved:
        mailbox.health = Mailbox.Health.NEW
        mailbox.next_attempt_at = None
        mailbox.consecutive_failures = 0
    mailbox.save()
    return mailbox


def mailbox_delete(*, mailbox: Mailbox) -> None:
    mailbox.delete()


@dataclass
class CheckResult:
    ok: bool
    imap_ok: bool = False
    smtp_ok: bool | None = None
    imap_capabilities: list[str] = field(default_factory=list)
    folders: list[dict[str, str]] = field(default_factory=list)
    smtp_features: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _smtp_check(cs: ConnectionSettings) -> list[str]:
    ctx = ssl.create_default_context()
    if not cs.tls_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    try:
        if cs.security == "ssl":
            conn: smtplib.SMTP = smtplib.SMTP_SSL(cs.host, cs.port, timeout=20, context=ctx)
        else:
            conn = smtplib.SMTP(cs.host, cs.port, timeout=20)
            conn.ehlo()
            if cs.security == "starttls":
                if not conn.has_extn("starttls"):
                    raise ImapError("tls", f"SMTP server {cs.host}:{cs.port} does not offer STARTTLS: use SSL/TLS (465).")
                conn.starttls(context=ctx)
        conn.ehlo()
        features = sorted(conn.esmtp_features)
        try:
            if cs.auth == "oauth2":
                auth = f"user={cs.username}\x01auth=Bearer {cs.access_token}\x01\x01"
                conn.auth("XOAUTH2", lambda challenge=None: auth, initial_response_ok=True)
            else:
                conn.login(cs.username, cs.password)
        except smtplib.SMTPAuthenticationError as exc:
            raise ImapError(
                "auth",
                f"SMTP login to {cs.host}:{cs.port} as {cs.username!r} was refused: {exc.smtp_code} "
                f"{exc.smtp_error.decode(errors='replace') if isinstance(exc.smtp_error, bytes) else exc.smtp_error}. "
                "Check the password (app password for Gmail/Yandex/Mail.ru).",
            ) from exc
        except smtplib.SMTPNotSupportedError as exc:
            raise ImapError("auth", f"SMTP server {cs.host}:{cs.port} offers no AUTH here (try STARTTLS).") from exc
        conn.quit()
        return features
    except ImapError:
        raise
    except (OSError, smtplib.SMTPException) as exc:
        raise describe_socket_error("SMTP", cs, exc) from exc


def mailbox_test(*, mailbox: Mailbox, check_smtp: bool = True) -> CheckResult:
    """Log in to IMAP and SMTP; report capabilities and folders, or exactly what is wrong."""
    from mailroom.ingest.imap.worker import open_session

    result = CheckResult(ok=False)
    try:
        session = open_session(mailbox)
        try:
            result.imap_capabilities = sorted(session.capabilities)
            result.folders = [{"name": f.name, "role": f.role} for f in session.folders()]
            result.imap_ok = True
        finally:
            session.close()
    except ImapError as exc:
        result.errors.append(f"IMAP: {exc.message}")
    if check_smtp and (mailbox.smtp_host or mailbox.imap_host):
        try:
            result.smtp_features = _smtp_check(smtp_settings(mailbox))
            result.smtp_ok = True
        except ImapError as exc:
            result.smtp_ok = False
            result.errors.append(f"SMTP: {exc.message}")
    result.ok = result.imap_ok and result.smtp_ok is not False
    return result
