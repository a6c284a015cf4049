"""Review of held relay mail: ``/api/v1/relay/holds`` (list, get, download, release, reject)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from django.http import HttpRequest, HttpResponse
from ninja import Router, Schema
from pydantic import Field

from mailroom.api.counting import CountedPage, CountParam, count_rows
from mailroom.api.messages import file_response
from mailroom.api.params import id_query, limit_query, offset_query
from mailroom.outbound.access import access_relay_hold_for_user, relay_holds_for_user
from mailroom.outbound.models import RelayHold
from mailroom.outbound.relay import relay_hold_reject, relay_hold_release
from mailroom.parsing.headers import summarize_headers

router = Router(tags=["relay"])


class HoldOut(Schema):
    id: int
    mailbox: int | None
    relay_kind: str | None
    mail_from: str
    rcpt_to: str
    reason: str
    subject: str
    message_id: str
    size: int
    created_at: datetime
    decision: Literal["pending", "released", "rejected"]
    reviewed_at: datetime | None
    reviewed_by: int | None
    message: int | None
    outbox: int | None


class HoldPage(CountedPage):
    items: list[HoldOut] = Field(description="newest first; the next page is offset + limit")


class Error(Schema):
    detail: str
    field: str | None = None


def _out(hold: RelayHold) -> dict[str, Any]:
    raw = bytes(hold.raw)
    summary = summarize_headers(raw)
    token = hold.token
    return {
        "id": hold.pk, "mailbox": token.mailbox_id if token else None, "relay_kind": token.kind if token else None,
        "mail_from": hold.mail_from, "rcpt_to": hold.rcpt_to, "reason": hold.reason, "subject": summary.subject,
        "message_id": summary.message_id, "size": len(raw), "created_at": hold.created_at,
        "decision": hold.decision or "pending", "reviewed_at": hold.reviewed_at, "reviewed_by": hold.reviewed_by_id,
        "message": hold.message_id, "outbox": hold.outbox_id,
    }


@router.get("/holds", response=HoldPage, summary="Held relay mail, newest first")
def holds_list(request: HttpRequest, decision: Literal["pending", "released", "rejected"] = "pending",
               mailbox: int | None = id_query(), limit: int = limit_query(), offset: int = offset_query(),
               count: CountParam = "exact") -> dict[str, Any]:
    qs = relay_holds_for_user(request.user).filter(decision="" if decision == "pending" else decision)
    if mailbox is not None:
        qs = qs.filter(token__mailbox_id=mailbox)
    page = qs.select_related("token").order_by("-id")[offset : offset + limit]
    return {"items": [_out(h) for h in page], **count_rows(qs, count)}


@router.get("/holds/{hold_id}", response={200: HoldOut, 404: Error})
def holds_get(request: HttpRequest, hold_id: int) -> dict[str, Any]:
    return _out(access_relay_hold_for_user(request.user, hold_id))


@router.get("/holds/{hold_id}/raw", response={200: None, 404: Error}, summary="Download the held message (.eml)")
def holds_raw(request: HttpRequest, hold_id: int) -> HttpResponse:
    hold = access_relay_hold_for_user(request.user, hold_id)
    return file_response(bytes(hold.raw), f"held-{hold.pk}.eml", "message/rfc822")


@router.post("/holds/{hold_id}/release", response={200: HoldOut, 404: Error, 409: Error},
             summary="Release: a client reply joins its thread; an owner's answer goes to the client")
def holds_release(request: HttpRequest, hold_id: int) -> dict[str, Any]:
    hold = access_relay_hold_for_user(request.user, hold_id)
    return _out(relay_hold_release(hold=hold, user=request.user))


@router.post("/holds/{hold_id}/reject", response={200: HoldOut, 404: Error, 409: Error})
def holds_reject(request: HttpRequest, hold_id: int) -> dict[str, Any]:
    hold = access_relay_hold_for_user(request.user, hold_id)
    return _out(relay_hold_reject(hold=hold, user=request.user))
