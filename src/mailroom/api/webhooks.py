"""Webhook endpoints: ``/api/v1/webhooks`` (Standard Webhooks; see docs/architecture.md, "Webhooks").

A team's members list and read endpoints and their delivery logs; its admins create, change, rotate,
enable, disable, delete and replay. The secret (``whsec_...``) is in the answer of the request that
made it (create, rotate-secret, a URL change with ``rotate_secret``) and never again."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from django.http import HttpRequest
from ninja import Field, Router, Schema

from mailroom.accounts.access import access_team_for_user, default_team_for_user, require_team_admin
from mailroom.api.counting import CountedPage, CountParam, count_rows
from mailroom.api.inputs import InputSchema
from mailroom.api.params import limit_query, offset_query
from mailroom.core.errors import InvalidInput
from mailroom.webhooks.access import (
    access_webhook_delivery,
    access_webhook_endpoint_for_user,
    webhook_endpoints_for_user,
)
from mailroom.webhooks.models import WebhookDelivery, WebhookEndpoint
from mailroom.webhooks.services import (
    WithSecret,
    webhook_delivery_replay,
    webhook_endpoint_create,
    webhook_endpoint_delete,
    webhook_endpoint_set_enabled,
    webhook_endpoint_update,
    webhook_replay_since,
    webhook_secret_rotate,
)

router = Router(tags=["webhooks"])
WHAT = "webhooks"


class EndpointIn(InputSchema):
    url: str = Field(..., max_length=2000, description="https://... (http only to hosts in MAILROOM_WEBHOOK_ALLOW_HOSTS)")
    event_types: list[str] = Field(default_factory=list, description="event kinds to send; empty: all")
    description: str = Field("", max_length=500)
    enabled: bool = True
    team: int | None = Field(None, description="team id (default: your first team)")


class EndpointPatch(InputSchema):
    url: str | None = Field(None, max_length=2000)
    event_types: list[str] | None = None
    description: str | None = Field(None, max_length=500)
    enabled: bool | None = None
    rotate_secret: bool = Field(False, description="issue a new secret (needed when the URL moves to another "
                                "host: a secret never follows a changed destination); shown once")


class ReplaySinceIn(InputSchema):
    since: datetime = Field(description="every event from this time on (with a time zone)")


class EndpointOut(Schema):
    id: int
    team: int
    url: str
    event_types: list[str]
    description: str
    enabled: bool
    disabled_reason: str
    previous_secret_expires_at: datetime | None = Field(
        description="until then the previous secret signs beside the current one (rotation overlap)")
    failing_since: datetime | None
    last_success_at: datetime | None
    last_failure_at: datetime | None
    created_at: datetime
    updated_at: datetime


class EndpointWithSecret(EndpointOut):
    secret: str = Field(description="whsec_...: shown this once; store it now")


class EndpointPage(CountedPage):
    items: list[EndpointOut]


class AttemptOut(Schema):
    id: int
    started_at: datetime
    webhook_timestamp: int
    duration_ms: int
    status_code: int | None
    response_excerpt: str
    error: str
    success: bool


class DeliveryOut(Schema):
    id: int
    webhook_id: str
    event: int
    event_type: str
    state: str
    attempts: int
    next_attempt_at: datetime | None
    last_status: int | None
    last_error: str
    delivered_at: datetime | None
    failed_at: datetime | None
    created_at: datetime


class DeliveryDetail(DeliveryOut):
    attempt_log: list[AttemptOut]


class DeliveryPage(CountedPage):
    items: list[DeliveryOut] = Field(description="newest first; the next page is offset + limit")


class ReplayOut(Schema):
    scheduled: int


class Error(Schema):
    detail: str
    field: str | None = None


def _out(ep: WebhookEndpoint, secret: str | None = None) -> dict[str, Any]:
    data = {f: getattr(ep, f) for f in EndpointOut.model_fields if f != "team"}
    data["team"] = ep.team_id
    if secret:
        data["secret"] = secret
    return data


def _delivery(d: WebhookDelivery, *, attempts: bool = False) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": d.pk, "webhook_id": d.webhook_id, "event": d.event_id, "event_type": d.event.kind, "state": d.state,
        "attempts": d.attempts, "next_attempt_at": d.next_attempt_at, "last_status": d.last_status,
        "last_error": d.last_error, "delivered_at": d.delivered_at, "failed_at": d.failed_at,
        "created_at": d.created_at,
    }
    if attempts:
        data["attempt_log"] = [
            {f: getattr(a, f) for f in AttemptOut.model_fields} for a in d.attempt_log.order_by("id")]
    return data


def _admin_endpoint(request: HttpRequest, endpoint_id: int) -> WebhookEndpoint:
    ep = access_webhook_endpoint_for_user(request.user, endpoint_id)
    require_team_admin(request.user, ep.team_id, WHAT)
    return ep


@router.post("", response={201: EndpointWithSecret, 400: Error, 403: Error, 404: Error})
def webhook_create(request: HttpRequest, payload: EndpointIn) -> tuple[int, dict[str, Any]]:
    team = access_team_for_user(request.user, payload.team) if payload.team else default_team_for_user(request.user)
    require_team_admin(request.user, team.pk, WHAT)
    made = webhook_endpoint_create(team_id=team.pk, url=payload.url, event_types=payload.event_types,
                                   description=payload.description, enabled=payload.enabled, user=request.user)
    return 201, _out(made.endpoint, made.secret)


@router.get("", response=EndpointPage)
def webhook_list(request: HttpRequest, limit: int = limit_query(), offset: int = offset_query(),
                 count: CountParam = "exact") -> dict[str, Any]:
    qs = webhook_endpoints_for_user(request.user).order_by("id")
    return {"items": [_out(ep) for ep in qs[offset : offset + limit]], **count_rows(qs, count)}


@router.get("/{endpoint_id}", response={200: EndpointOut, 404: Error})
def webhook_get(request: HttpRequest, endpoint_id: int) -> dict[str, Any]:
    return _out(access_webhook_endpoint_for_user(request.user, endpoint_id))


@router.patch("/{endpoint_id}", response={200: EndpointWithSecret | EndpointOut, 400: Error, 403: Error,
                                          404: Error, 409: Error})
def webhook_update(request: HttpRequest, endpoint_id: int, payload: EndpointPatch) -> dict[str, Any]:
    ep = _admin_endpoint(request, endpoint_id)
    fields = payload.dict(exclude_unset=True)
    result = webhook_endpoint_update(endpoint=ep, **fields)
    if isinstance(result, WithSecret):
        return _out(result.endpoint, result.secret)
    return _out(result)


@router.post("/{endpoint_id}/rotate-secret", response={200: EndpointWithSecret, 403: Error, 404: Error})
def webhook_rotate(request: HttpRequest, endpoint_id: int) -> dict[str, Any]:
    made = webhook_secret_rotate(endpoint=_admin_endpoint(request, endpoint_id))
    return _out(made.endpoint, made.secret)


@router.post("/{endpoint_id}/enable", response={200: EndpointOut, 403: Error, 404: Error})
def webhook_enable(request: HttpRequest, endpoint_id: int) -> dict[str, Any]:
    return _out(webhook_endpoint_set_enabled(endpoint=_admin_endpoint(request, endpoint_id), enabled=True))


@router.post("/{endpoint_id}/disable", response={200: EndpointOut, 403: Error, 404: Error})
def webhook_disable(request: HttpRequest, endpoint_id: int) -> dict[str, Any]:
    return _out(webhook_endpoint_set_enabled(endpoint=_admin_endpoint(request, endpoint_id), enabled=False))


@router.delete("/{endpoint_id}", response={204: None, 403: Error, 404: Error})
def webhook_delete(request: HttpRequest, endpoint_id: int) -> tuple[int, None]:
    webhook_endpoint_delete(endpoint=_admin_endpoint(request, endpoint_id))
    return 204, None


@router.get("/{endpoint_id}/deliveries", response={200: DeliveryPage, 404: Error})
def webhook_deliveries(request: HttpRequest, endpoint_id: int,
                       state: Literal["pending", "delivered", "failed"] | None = None,
                       limit: int = limit_query(), offset: int = offset_query(),
                       count: CountParam = "exact") -> dict[str, Any]:
    ep = access_webhook_endpoint_for_user(request.user, endpoint_id)
    qs = WebhookDelivery.objects.filter(endpoint_id=ep.pk).order_by("-id")
    if state:
        qs = qs.filter(state=state)
    page = qs.select_related("event")[offset : offset + limit]
    return {"items": [_delivery(d) for d in page], **count_rows(qs, count)}


@router.get("/{endpoint_id}/deliveries/{delivery_id}", response={200: DeliveryDetail, 404: Error})
def webhook_delivery_get(request: HttpRequest, endpoint_id: int, delivery_id: int) -> dict[str, Any]:
    ep = access_webhook_endpoint_for_user(request.user, endpoint_id)
    return _delivery(access_webhook_delivery(ep, delivery_id), attempts=True)


@router.post("/{endpoint_id}/deliveries/{delivery_id}/replay", response={200: DeliveryOut, 403: Error, 404: Error})
def webhook_delivery_replay_view(request: HttpRequest, endpoint_id: int, delivery_id: int) -> dict[str, Any]:
    ep = _admin_endpoint(request, endpoint_id)
    return _delivery(webhook_delivery_replay(delivery=access_webhook_delivery(ep, delivery_id)))


@router.post("/{endpoint_id}/replay", response={200: ReplayOut, 400: Error, 403: Error, 404: Error})
def webhook_replay_since_view(request: HttpRequest, endpoint_id: int, payload: ReplaySinceIn) -> dict[str, Any]:
    ep = _admin_endpoint(request, endpoint_id)
    if payload.since.tzinfo is None:
        raise InvalidInput("since: give a time zone (e.g. 2025-01-01T09:00:00Z)", field="since")
    return {"scheduled": webhook_replay_since(endpoint=ep, since=payload.since)}
