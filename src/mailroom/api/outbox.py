"""Compose and outbox status: ``/api/v1/outbox`` (``POST /messages`` belongs to the messages router)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from django.http import HttpRequest
from ninja import Field, Router, Schema

from mailroom.accounts.access import access_mailbox_for_user
from mailroom.api.counting import CountedPage, CountParam, count_rows
from mailroom.api.inputs import InputSchema, QueryText
from mailroom.api.params import id_query, limit_query, offset_query
from mailroom.core.errors import InvalidInput
from mailroom.outbound.access import access_outbox_for_user, outbox_for_user
from mailroom.outbound.models import OutboxMessage
from mailroom.outbound.services import (
    AttachmentInput,
    ComposeInput,
    outbox_cancel,
    outbox_create,
    outbox_retry,
)

router = Router(tags=["outbox"])


class AttachmentIn(InputSchema):
    multiline_fields = frozenset({"content"})  # base64, in lines or not

    filename: str = Field(..., max_length=255)
    content_type: str = "application/octet-stream"
    content: str = Field(..., description="base64")
    inline: bool = False
    content_id: str = ""


class OutboxIn(InputSchema):
    multiline_fields = frozenset({"text", "html"})

    mailbox: int
    to: list[str] = []
    cc: list[str] = []
    bcc: list[str] = []
    subject: str | None = None
    text: str = ""
    html: str = ""
    in_reply_to: int | None = Field(None, description="a Mailroom message id")
    mode: Literal["new", "reply", "reply_all", "forward"] = "new"
    template: str | None = None
    attachments: list[AttachmentIn] = []
    send_at: datetime | None = None
    idempotency_key: str | None = Field(None, max_length=200)
    signature: bool = True
    relay_to_owner: bool | None = None
    deal: int | None = None
    reply_to_choice: Literal["from", "reply_to"] | None = Field(
        None,
        description="replying to a message that is not authenticated and whose Reply-To differs from its "
        "From (the message's warnings say reply_to_differs): answer its From or its Reply-To",
    )


class OutboxOut(Schema):
    id: int
    mailbox: int
    state: str
    mode: str
    origin: str
    message_id: str
    subject: str
    to: list[str]
    cc: list[str]
    bcc: list[str]
    size: int
    attempts: int
    send_at: datetime | None
    next_attempt_at: datetime | None
    last_smtp_code: int | None
    last_smtp_text: str
    last_error_kind: str
    recipient_results: dict[str, Any]
    sent_at: datetime | None
    failed_at: datetime | None
    cancelled_at: datetime | None
    appended_to_sent_at: datetime | None
    in_reply_to: int | None
    thread: int | None
    message: int | None
    created_at: datetime


class OutboxPage(CountedPage):
    items: list[OutboxOut] = Field(description="newest first; the next page is offset + limit")


class Error(Schema):
    detail: str
    field: str | None = None


def _out(row: OutboxMessage) -> dict[str, Any]:
    return {
        "id": row.pk, "mailbox": row.mailbox_id, "state": row.state, "mode": row.mode, "origin": row.origin,
        "message_id": row.message_id, "subject": row.subject, "to": row.to, "cc": row.cc, "bcc": row.bcc,
        "size": row.size, "attempts": row.attempts, "send_at": row.send_at, "next_attempt_at": row.next_attempt_at,
        "last_smtp_code": row.last_smtp_code, "last_smtp_text": row.last_smtp_text,
        "last_error_kind": row.last_error_kind, "recipient_results": row.recipient_results,
        "sent_at": row.sent_at, "failed_at": row.failed_at, "cancelled_at": row.cancelled_at,
        "appended_to_sent_at": row.appended_to_sent_at, "in_reply_to": row.reply_to_message_id,
        "thread": row.thread_id, "message": row.stored_message_id, "created_at": row.created_at,
    }


@router.post("", response={200: OutboxOut, 201: OutboxOut, 400: Error, 404: Error, 409: Error})
def outbox_compose(request: HttpRequest, payload: OutboxIn) -> tuple[int, dict[str, Any]]:
    mailbox = access_mailbox_for_user(request.user, payload.mailbox)
    if payload.send_at is not None and payload.send_at.tzinfo is None:
        raise InvalidInput("send_at: give a time zone (e.g. 2025-01-01T09:00:00Z)", field="send_at")
    data = ComposeInput(
        to=tuple(payload.to), cc=tuple(payload.cc), bcc=tuple(payload.bcc), subject=payload.subject,
        text=payload.text, html=payload.html, in_reply_to=payload.in_reply_to, mode=payload.mode,
        template=payload.template,
        attachments=tuple(AttachmentInput(a.filename, a.content_type, a.content, a.inline, a.content_id)
                          for a in payload.attachments),
        send_at=payload.send_at, idempotency_key=payload.idempotency_key, signature=payload.signature,
        relay_to_owner=payload.relay_to_owner, deal=payload.deal, reply_to_choice=payload.reply_to_choice,
    )
    row, created = outbox_create(user=request.user, mailbox=mailbox, data=data)
    return (201 if created else 200), _out(row)


@router.get("", response=OutboxPage)
def outbox_list(request: HttpRequest, state: QueryText | None = None, mailbox: int | None = id_query(),
                limit: int = limit_query(), offset: int = offset_query(),
                count: CountParam = "exact") -> dict[str, Any]:
    qs = outbox_for_user(request.user).order_by("-id")
    if state:
        qs = qs.filter(state=state)
    if mailbox is not None:
        qs = qs.filter(mailbox_id=mailbox)
    return {"items": [_out(r) for r in qs[offset : offset + limit]], **count_rows(qs, count)}


@router.get("/{outbox_id}", response={200: OutboxOut, 404: Error})
def outbox_get(request: HttpRequest, outbox_id: int) -> dict[str, Any]:
    return _out(access_outbox_for_user(request.user, outbox_id))


@router.post("/{outbox_id}/retry", response={200: OutboxOut, 404: Error, 409: Error})
def outbox_retry_view(request: HttpRequest, outbox_id: int) -> dict[str, Any]:
    row = access_outbox_for_user(request.user, outbox_id)
    return _out(outbox_retry(outbox=row))


@router.post("/{outbox_id}/cancel", response={200: OutboxOut, 404: Error, 409: Error})
def outbox_cancel_view(request: HttpRequest, outbox_id: int) -> dict[str, Any]:
    row = access_outbox_for_user(request.user, outbox_id)
    return _out(outbox_cancel(outbox=row))
