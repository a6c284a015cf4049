"""Access helpers for webhook endpoints and their deliveries (the only door for api/ and web/):
a team's members see them, its admins change them (``accounts.access.require_team_admin``)."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from mailroom.accounts.access import scope_to_user
from mailroom.core.errors import NotFound
from mailroom.webhooks.models import WebhookDelivery, WebhookEndpoint


def webhook_endpoints_for_user(user: Any) -> QuerySet[WebhookEndpoint]:
    return scope_to_user(WebhookEndpoint.objects.all(), user)


def access_webhook_endpoint_for_user(user: Any, endpoint_id: int) -> WebhookEndpoint:
    row = webhook_endpoints_for_user(user).filter(id=endpoint_id).first()
    if row is None:
        raise NotFound(f"webhook endpoint {endpoint_id} not found")
    return row


def access_webhook_delivery(endpoint: WebhookEndpoint, delivery_id: int) -> WebhookDelivery:
    """A delivery of an endpoint the caller already has (through the helper above)."""
    row = WebhookDelivery.objects.filter(endpoint_id=endpoint.pk, id=delivery_id).select_related("event").first()
    if row is None:
        raise NotFound(f"delivery {delivery_id} not found")
    return row
