from __future__ import annotations

import json
from typing import Any

from django.db import models
from django.utils.translation import gettext_lazy as _

from mailroom.core import crypto


class Mailbox(models.Model):
    class Provider(models.TextChoices):
        GENERIC = "generic", "Generic IMAP/SMTP"
        GMAIL = "gmail", "Gmail / Google Workspace"
        MICROSOFT = "microsoft", "Microsoft 365 / Outlook.com"
        YANDEX = "yandex", "Yandex 360"
        MAILRU = "mailru", "Mail.ru"

    class Security(models.TextChoices):
        SSL = "ssl", "SSL/TLS"
        STARTTLS = "starttls", "STARTTLS"
        PLAIN = "plain", "Plain (loopback only)"

    class Auth(models.TextChoices):
        PASSWORD = "password", "Password / app password"
        OAUTH2 = "oauth2", "OAuth2 (XOAUTH2)"

    class Health(models.TextChoices):  # the labels are shown on the web page, in the reader's language
        NEW = "new", _("New")
        OK = "ok", _("OK")
        SYNCING = "syncing", _("Syncing")
        AUTH_FAILED = "auth_failed", _("Authentication failed")
        ERROR = "error", _("Error")

    class ContactPolicy(models.TextChoices):
        NONE = "none", "Create no contacts"
        SENDERS = "senders", "Create contacts for senders"
        ALL = "all", "Create contacts for all external participants"

    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE, related_name="mailboxes")
    name = models.CharField(max_length=200)
    email = models.EmailField()
    display_name = models.CharField(max_length=200, blank=True)
    provider = models.CharField(max_length=20, choices=Provider.choices, default=Provider.GENERIC)

    imap_host = models.CharField(max_length=255)
    imap_port = models.PositiveIntegerField(default=993)
    imap_security = models.CharField(max_length=10, choices=Security.choices, default=Security.SSL)
    imap_username = models.CharField(max_length=255)
    smtp_host = models.CharField(max_length=255, blank=True)
    smtp_port = models.PositiveIntegerField(default=465)
    smtp_security = models.CharField(max_length=10, choices=Security.choices, default=Security.SSL)
    smtp_username = models.CharField(max_length=255, blank=True)
    auth_method = models.CharField(max_length=10, choices=Auth.choices, default=Auth.PASSWORD)
    # Encrypted JSON: {"password": ...} or {"access_token", "refresh_token", "expires_at", "client_id",
    # "client_secret", "token_url"}. Never logged, never returned by the API.
    secret_enc = models.TextField(blank=True)
    tls_verify = models.BooleanField(default=True)

    # Which folder roles to sync, e.g. ["inbox", "sent"]; "archive" etc. when configured.
    sync_roles = models.JSONField(default=list)
    sync_enabled = models.BooleanField(default=True)
    newest_first = models.BooleanField(default=True)
    # The provider files sent mail itself (Gmail): no IMAP APPEND after SMTP submission.
    provider_saves_sent = models.BooleanField(default=False)
    contact_policy = models.CharField(max_length=10, choices=ContactPolicy.choices, default=ContactPolicy.SENDERS)
    message_id_domain = models.CharField(max_length=255, blank=True)

    health = models.CharField(max_length=20, choices=Health.choices, default=Health.NEW)
    last_error = models.TextField(blank=True)
    last_error_at = models.DateTimeField(null=True, blank=True)
    last_sync_at = models.DateTimeField(null=True, blank=True)
    consecutive_failures = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    # Lease for scale-out: which worker holds the sync of this mailbox, until when.
    lease_owner = models.CharField(max_length=100, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["team", "email"], name="uniq_mailbox_email_per_team")]

    def __str__(self) -> str:
        return f"{self.name} <{self.email}>"

    # --- secrets -----------------------------------------------------------------------------------
    def _aad(self) -> bytes:
        return b"mailbox-secret"

    def get_secret(self) -> dict[str, Any]:
        if not self.secret_enc:
            return {}
        data: dict[str, Any] = json.loads(crypto.decrypt(self.secret_enc, aad=self._aad()))
        return data

    def set_secret(self, data: dict[str, Any]) -> None:
        self.secret_enc = crypto.encrypt(json.dumps(data, sort_keys=True), aad=self._aad()) if data else ""

    @property
    def roles(self) -> list[str]:
        return list(self.sync_roles or ["inbox", "sent"])


class Folder(models.Model):
    """One IMAP folder of a mailbox and the sync cursor for it."""

    class Role(models.TextChoices):
        INBOX = "inbox", "Inbox"
        SENT = "sent", "Sent"
        ARCHIVE = "archive", "Archive"
        DRAFTS = "drafts", "Drafts"
        JUNK = "junk", "Junk"
        TRASH = "trash", "Trash"
        ALL = "all", "All mail"
        OTHER = "other", "Other"

    mailbox = models.ForeignKey(Mailbox, on_delete=models.CASCADE, related_name="folders")
    name = models.CharField(max_length=500)  # decoded (unicode) name
    raw_name = models.CharField(max_length=500)  # as on the wire (modified UTF-7)
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.OTHER)
    selected = models.BooleanField(default=False)  # synced?

    uidvalidity = models.BigIntegerField(null=True, blank=True)
    uidnext = models.BigIntegerField(null=True, blank=True)
    highestmodseq = models.BigIntegerField(null=True, blank=True)
    # Everything with uid > synced_high_uid is new; backfill goes down from backfill_low_uid.
    # Every uid in [backfill_low_uid, synced_high_uid] is stored (or known absent).
    synced_high_uid = models.BigIntegerField(default=0)
    backfill_low_uid = models.BigIntegerField(null=True, blank=True)  # None: backfill not started
    backfill_done = models.BooleanField(default=False)
    server_count = models.PositiveIntegerField(default=0)  # EXISTS at last look
    stored_count = models.PositiveIntegerField(default=0)  # sources we hold for this uidvalidity
    last_sync_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["mailbox", "raw_name"], name="uniq_folder_name")]

    def __str__(self) -> str:
        return f"{self.mailbox_id}:{self.name}"
