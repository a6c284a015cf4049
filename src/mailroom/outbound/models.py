from __future__ import annotations

from django.conf import settings
from django.db import models


class OutboxMessage(models.Model):
    """One message to send. The final bytes and the Message-ID are fixed when the row is created,
    before the first attempt, so a retry (or a restart after a crash) sends exactly the same message.

    States: queued -> sending -> sent | retrying (-> sending ...) | failed; queued/retrying -> cancelled.
    """

    class State(models.TextChoices):
        QUEUED = "queued", "Queued"
        SENDING = "sending", "Sending"
        SENT = "sent", "Sent"
        RETRYING = "retrying", "Retrying"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    class Mode(models.TextChoices):
        NEW = "new", "New message"
        REPLY = "reply", "Reply"
        REPLY_ALL = "reply_all", "Reply all"
        FORWARD = "forward", "Forward"

    class Origin(models.TextChoices):
        COMPOSE = "compose", "Composed in the CRM"
        RELAY_FORWARD = "relay_forward", "Reply forwarded to the owner's personal address"
        RELAY_OWNER = "relay_owner", "Owner's answer relayed to the client"
        AUTO = "auto", "Automatic mail"

    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE, related_name="outbox")
    mailbox = models.ForeignKey("mailboxes.Mailbox", on_delete=models.CASCADE, related_name="outbox")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="outbox"
    )
    idempotency_key = models.CharField(max_length=200)
    request_hash = models.CharField(max_length=64)  # sha256 of the normalised request: same key, other body -> 409
    mode = models.CharField(max_length=10, choices=Mode.choices, default=Mode.NEW)
    origin = models.CharField(max_length=15, choices=Origin.choices, default=Origin.COMPOSE)
    reply_to_message = models.ForeignKey(
        "conversations.Message", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    thread = models.ForeignKey(
        "conversations.Thread", null=True, blank=True, on_delete=models.SET_NULL, related_name="outbox"
    )

    # The message, fixed before the first attempt.
    message_id = models.CharField(max_length=300, unique=True)  # without angle brackets
    subject = models.TextField(blank=True)
    mail_from = models.CharField(max_length=320)  # envelope sender
    recipients = models.JSONField(default=list)  # envelope recipients (to + cc + bcc), lower-case
    to = models.JSONField(default=list)
    cc = models.JSONField(default=list)
    bcc = models.JSONField(default=list)
    raw = models.BinaryField()  # the bytes submitted over SMTP (no Bcc header)
    size = models.PositiveIntegerField(default=0)

    # State machine.
    state = models.CharField(max_length=10, choices=State.choices, default=State.QUEUED)
    send_at = models.DateTimeField(null=True, blank=True)
    next_attempt_at = models.DateTimeField()
    attempts = models.PositiveSmallIntegerField(default=0)
    max_attempts = models.PositiveSmallIntegerField(default=8)
    lease_owner = models.CharField(max_length=100, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    last_smtp_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_smtp_text = models.TextField(blank=True)
    last_error_kind = models.CharField(max_length=30, blank=True)  # rcpt_rejected, timeout, dropped, ...
    recipient_results = models.JSONField(default=dict)  # address -> {"code", "text"} for refused ones
    sent_at = models.DateTimeField(null=True, blank=True)
    failed_at = models.DateTimeField(null=True, blank=True)
    cancelled_at = models.DateTimeField(null=True, blank=True)
    stored_message = models.ForeignKey(
        "conversations.Message", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    # Sent folder: skipped where the provider saves sent mail itself.
    append_required = models.BooleanField(default=True)
    appended_to_sent_at = models.DateTimeField(null=True, blank=True)
    append_attempts = models.PositiveSmallIntegerField(default=0)
    append_error = models.TextField(blank=True)

    # Relay.
    relay_token = models.ForeignKey(
        "outbound.RelayToken", null=True, blank=True, on_delete=models.SET_NULL, related_name="outbox"
    )
    relay_to_owner = models.BooleanField(default=False)  # per send: forward replies to the owner
    source_message = models.ForeignKey(  # the incoming message a relay forward/answer is about
        "conversations.Message", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["team", "idempotency_key"], name="uniq_outbox_idempotency_per_team"),
        ]
        indexes = [
            models.Index(fields=["state", "next_attempt_at"], name="outbox_due"),
            models.Index(fields=["team", "-created_at"], name="outbox_team_recent"),
            models.Index(fields=["appended_to_sent_at", "state"], name="outbox_append"),
        ]

    def __str__(self) -> str:
        return f"outbox {self.pk} <{self.message_id}> {self.state}"

    def sent_copy(self) -> bytes:
        """The bytes stored in Mailroom and APPENDed to Sent: the submitted bytes plus a Bcc header
        (the content hash covers Message-ID, Date, From, Subject and body, so it is the same)."""
        from mailroom.outbound.compose import sent_copy_bytes

        return sent_copy_bytes(bytes(self.raw), list(self.bcc))


class RelayToken(models.Model):
    """The token in ``reply+<token>@<relay domain>``. Only the random part (token_id) is stored;
    the address carries it plus an HMAC (core.tokens), so a forged address is refused without a lookup.

    kind "client": the counterpart's replies (Reply-To of our mail) join the thread.
    kind "owner": the owner's answers to a forwarded reply go to the client from the company mailbox.
    """

    class Kind(models.TextChoices):
        CLIENT = "client", "Client replies"
        OWNER = "owner", "Owner answers"

    token_id = models.CharField(max_length=32, unique=True)
    token = models.CharField(max_length=64)  # the full (signed) token, to rebuild the address
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.CLIENT)
    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE, related_name="+")
    mailbox = models.ForeignKey("mailboxes.Mailbox", on_delete=models.CASCADE, related_name="relay_tokens")
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="relay_tokens"
    )
    thread = models.ForeignKey(
        "conversations.Thread", null=True, blank=True, on_delete=models.CASCADE, related_name="relay_tokens"
    )
    # The Message-ID of the mail that introduced the token: finds the thread before it is linked.
    root_message_id = models.CharField(max_length=300, blank=True)
    # For owner tokens: the counterpart the owner's answer goes to, and the message answered.
    counterpart = models.CharField(max_length=320, blank=True)
    source_message = models.ForeignKey(
        "conversations.Message", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    forward_to_owner = models.BooleanField(default=False)  # client tokens: forward replies to the owner
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"relay {self.kind} {self.token_id[:6]}…"


class PersonalAddress(models.Model):
    """A user's registered personal address: where replies may be forwarded, and the only senders
    allowed to answer through an owner relay token."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="personal_addresses")
    address = models.CharField(max_length=320)  # lower-case
    # Per deal owner: forward replies in threads of deals he owns to this address.
    forward_deal_replies = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "address"], name="uniq_personal_address")]

    def __str__(self) -> str:
        return self.address


class MailboxRelaySettings(models.Model):
    """Relay options of a mailbox (kept beside the Mailbox model, which belongs to another package)."""

    mailbox = models.OneToOneField("mailboxes.Mailbox", on_delete=models.CASCADE, related_name="relay_settings")
    reply_to_relay = models.BooleanField(default=True)  # Reply-To: reply+token@relay-domain when configured
    forward_to_owner = models.BooleanField(default=False)  # forward incoming replies to the owner
    owner = models.ForeignKey(  # the owner when no deal owner / sender applies
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    def __str__(self) -> str:
        return f"relay settings of mailbox {self.mailbox_id}"


class RelayHold(models.Model):
    """Relay mail we neither trusted nor refused: kept, with the reason, for a human to review.
    Released, it goes where trusted mail of its relay address goes (the thread, or on to the client);
    rejected, it stays here, marked."""

    class Decision(models.TextChoices):
        PENDING = "", "Pending review"
        RELEASED = "released", "Released"
        REJECTED = "rejected", "Rejected"

    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE, related_name="+")
    token = models.ForeignKey(RelayToken, null=True, on_delete=models.SET_NULL, related_name="holds")
    mail_from = models.CharField(max_length=320, blank=True)
    rcpt_to = models.CharField(max_length=320)
    reason = models.CharField(max_length=300)
    raw = models.BinaryField()
    created_at = models.DateTimeField(auto_now_add=True)
    reviewed_at = models.DateTimeField(null=True, blank=True)
    decision = models.CharField(max_length=10, choices=Decision.choices, default=Decision.PENDING, blank=True)
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    message = models.ForeignKey(  # what a released client reply became
        "conversations.Message", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    outbox = models.ForeignKey(  # what a released owner answer became
        OutboxMessage, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    def __str__(self) -> str:
        return f"held relay mail {self.pk}: {self.reason}"


class RelayQuotaWindow(models.Model):
    """Messages the relay endpoint accepted for one team or one relay token in one fixed window
    (``MAILROOM_RELAY_QUOTA_WINDOW_SECONDS``): the per-team and per-token quotas
    (``outbound.relay_quota``). Kept in the database, so every endpoint process and a restarted one
    see the same counts; a row is incremented in the transaction that commits the message it
    counts. Rows of past windows are pruned on write."""

    class Scope(models.TextChoices):
        TEAM = "team", "Team"
        TOKEN = "token", "Relay token"

    scope = models.CharField(max_length=8, choices=Scope.choices)
    scope_id = models.BigIntegerField()  # the team's or the relay token's primary key
    window_start = models.DateTimeField()
    accepted = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["scope", "scope_id", "window_start"], name="uniq_relay_quota_window"),
        ]
        indexes = [models.Index(fields=["window_start"], name="relay_quota_window_start")]

    def __str__(self) -> str:
        return f"relay quota {self.scope} {self.scope_id} @ {self.window_start:%Y-%m-%d %H:%M}: {self.accepted}"


class Signature(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="signatures")
    mailbox = models.ForeignKey(  # null: for every mailbox
        "mailboxes.Mailbox", null=True, blank=True, on_delete=models.CASCADE, related_name="signatures"
    )
    text = models.TextField(blank=True)
    html = models.TextField(blank=True)
    is_default = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"signature {self.pk} of user {self.user_id}"


class Template(models.Model):
    """A Jinja2 template (rendered in a SandboxedEnvironment) with contact, company, deal and user."""

    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE, related_name="email_templates")
    name = models.CharField(max_length=200)
    subject = models.TextField(blank=True)
    text = models.TextField(blank=True)
    html = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["team", "name"], name="uniq_template_name_per_team")]

    def __str__(self) -> str:
        return self.name
