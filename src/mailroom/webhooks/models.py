"""Webhook endpoints, the delivery outbox (a row per event and endpoint, written in the event's
transaction) and the log of delivery attempts."""

from __future__ import annotations

import urllib.parse

from django.conf import settings
from django.db import models
from django.db.models import Q

from mailroom.core import crypto

_AAD = b"webhook-secret"


class WebhookEndpoint(models.Model):
    """Where a team's events are POSTed (Standard Webhooks). The secret (``whsec_...``) is stored
    encrypted (``core/crypto.py``) and shown once, when it is made. During a rotation's overlap the
    previous secret signs too (both signatures are sent). ``lease_owner``/``lease_until``: the
    delivery worker that holds the endpoint (one delivery at a time per endpoint); a killed worker's
    lease expires and another takes the endpoint's due deliveries over. ``version`` changes with the
    URL, the secret and ``enabled``: a worker in the middle of a batch stops when it changed."""

    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE, related_name="webhook_endpoints")
    url = models.CharField(max_length=2000)
    event_types = models.JSONField(default=list, blank=True, help_text="event kinds; empty: all")
    description = models.CharField(max_length=500, blank=True)
    enabled = models.BooleanField(default=True)
    disabled_reason = models.CharField(max_length=500, blank=True)
    secret_enc = models.TextField(editable=False)
    previous_secret_enc = models.TextField(blank=True, editable=False)
    previous_secret_expires_at = models.DateTimeField(null=True, blank=True)
    version = models.PositiveIntegerField(default=1)
    failing_since = models.DateTimeField(null=True, blank=True)
    last_success_at = models.DateTimeField(null=True, blank=True)
    last_failure_at = models.DateTimeField(null=True, blank=True)
    lease_owner = models.CharField(max_length=80, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [models.Index(fields=["team", "enabled"], name="webhook_endpoint_team")]

    def __str__(self) -> str:
        return f"{self.url} (team {self.team_id})"

    @property
    def origin(self) -> tuple[str, str, int | None]:
        return url_origin(self.url)

    def get_secret(self) -> str:
        return crypto.decrypt(self.secret_enc, aad=_AAD)

    def set_secret(self, secret: str) -> None:
        self.secret_enc = crypto.encrypt(secret, aad=_AAD)

    def get_previous_secret(self) -> str:
        return crypto.decrypt(self.previous_secret_enc, aad=_AAD) if self.previous_secret_enc else ""

    def set_previous_secret(self, secret: str) -> None:
        self.previous_secret_enc = crypto.encrypt(secret, aad=_AAD) if secret else ""


def url_origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) of ``url``: a stored secret never follows a change of any of them."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower(), port


class WebhookDelivery(models.Model):
    """The delivery outbox: one row per (event, endpoint), written in the event's transaction. The
    ``webhook-id`` header is derived from both (:attr:`webhook_id`): the same on every attempt."""

    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        DELIVERED = "delivered", "Delivered"
        FAILED = "failed", "Failed"

    event = models.ForeignKey("events.Event", on_delete=models.CASCADE, related_name="webhook_deliveries")
    endpoint = models.ForeignKey(WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries")
    state = models.CharField(max_length=12, choices=State.choices, default=State.PENDING)
    attempts = models.PositiveIntegerField(default=0, help_text="attempts since it was (re)scheduled")
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_status = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    failed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["event", "endpoint"], name="uniq_webhook_delivery")]
        indexes = [
            models.Index(fields=["endpoint", "next_attempt_at"], name="webhook_delivery_due",
                         condition=Q(state="pending")),
            models.Index(fields=["endpoint", "-id"], name="webhook_delivery_log"),
        ]

    def __str__(self) -> str:
        return f"{self.webhook_id} ({self.state})"

    @property
    def webhook_id(self) -> str:
        return webhook_id(self.event_id, self.endpoint_id)


def webhook_id(event_id: int, endpoint_id: int) -> str:
    return f"msg_{event_id}_{endpoint_id}"


class WebhookAttempt(models.Model):
    """One POST of a delivery: what the receiver answered (or why there was no answer)."""

    delivery = models.ForeignKey(WebhookDelivery, on_delete=models.CASCADE, related_name="attempt_log")
    endpoint = models.ForeignKey(WebhookEndpoint, on_delete=models.CASCADE, related_name="+")
    started_at = models.DateTimeField()
    webhook_timestamp = models.BigIntegerField()
    duration_ms = models.PositiveIntegerField()
    status_code = models.PositiveIntegerField(null=True, blank=True)
    response_excerpt = models.CharField(max_length=1000, blank=True)
    error = models.CharField(max_length=500, blank=True)
    success = models.BooleanField(default=False)

    class Meta:
        indexes = [models.Index(fields=["delivery", "id"], name="webhook_attempt_delivery")]

    def __str__(self) -> str:
        return f"attempt {self.pk} of delivery {self.delivery_id}: {self.status_code or self.error}"
