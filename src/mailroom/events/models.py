from __future__ import annotations

from django.db import models


class Event(models.Model):
    """Something that happened, written in the same transaction as the change it reports.

    The webhooks app (``webhooks/``) writes a delivery row per event and subscribed endpoint in the
    same transaction (``events.services`` recording hooks) and delivers those.
    Kinds: ``message.received``, ``message.sent``, ``message.failed``, ``message.bounced``,
    ``webhook.endpoint_disabled`` (an endpoint failed for days and was disabled: the team's admins
    are told through it).
    """

    class Kind(models.TextChoices):
        MESSAGE_RECEIVED = "message.received", "Message received"
        MESSAGE_SENT = "message.sent", "Message sent"
        MESSAGE_FAILED = "message.failed", "Message failed"
        MESSAGE_BOUNCED = "message.bounced", "Message bounced"
        WEBHOOK_ENDPOINT_DISABLED = "webhook.endpoint_disabled", "Webhook endpoint disabled"

    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE, related_name="events")
    kind = models.CharField(max_length=40, choices=Kind.choices)
    payload = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["delivered_at", "id"], name="event_undelivered"),
            models.Index(fields=["team", "-created_at"], name="event_team_recent"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} #{self.pk}"
