"""/api/v1/messages: list (cursor pagination), get one, raw .eml, attachments."""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Any

from django.db.models import Exists, OuterRef, Q, QuerySet
from django.http import HttpRequest, HttpResponse
from ninja import Query, Router, Schema
from pydantic import Field

from mailroom.accounts.access import access_mailbox_for_user
from mailroom.api.counting import COUNT_DESCRIPTION, CountedPage, CountMode, count_rows
from mailroom.api.inputs import InputSchema
from mailroom.api.params import MAX_DB_ID, MAX_LIMIT
from mailroom.conversations.access import access_message_for_user, messages_for_user
from mailroom.conversations.models import Attachment, Message, Source, message_body
from mailroom.conversations.selectors import message_warnings
from mailroom.core.errors import InvalidInput, NotFound
from mailroom.parsing.attachments import content_disposition

router = Router(tags=["messages"])


class AddressOut(Schema):
    address: str
    name: str
    role: str
    contact: int | None


class SourceOut(Schema):
    kind: str
    mailbox: int | None
    folder: str | None
    uidvalidity: int | None
    uid: int | None
    internal_date: datetime | None


class AttachmentOut(Schema):
    id: int
    filename: str
    content_type: str
    size: int
    content_id: str
    inline: bool
    url: str


class MessageSummary(Schema):
    id: int
    message_id: str
    subject: str
    from_address: str
    from_name: str
    date: datetime | None
    direction: str
    thread: int | None
    state: str
    has_attachments: bool
    is_auto_reply: bool
    is_bulk: bool


class WarningOut(Schema):
    code: str = Field(description="unverified, unauthenticated, suspicious or reply_to_differs")
    message: str


class MessageDetail(MessageSummary):
    warnings: list[WarningOut] = Field(
        description="who sent it: what the reader must know (show above the message)"
    )
    in_reply_to: list[str]
    references: list[str]
    to: list[AddressOut]
    cc: list[AddressOut]
    participants: list[AddressOut]
    text: str
    reply_text: str
    html: str = Field(description="sanitised HTML; show it in a sandboxed iframe")
    attachments: list[AttachmentOut]
    bounce: dict[str, Any] | None
    auth: dict[str, Any] | None
    errors: list[str]
    routing: dict[str, Any] | None
    sources: list[SourceOut]
    received_at: datetime
    size: int
    last_error: str


class MessagePage(CountedPage):
    items: list[MessageSummary]
    next_cursor: str | None


class MessageFilters(InputSchema):
    mailbox: int | None = Field(None, ge=1, le=MAX_DB_ID)
    folder: int | None = Field(None, ge=1, le=MAX_DB_ID, description="folder id (see the mailbox's folders)")
    since: datetime | None = None
    until: datetime | None = None
    thread: int | None = Field(None, ge=1, le=MAX_DB_ID)
    state: str | None = Field(
        None, description="default: linked (threaded, on cards); stored, parsed, quarantined or any for tooling"
    )
    cursor: str | None = None
    limit: int = Field(50, ge=1, le=MAX_LIMIT)
    count: CountMode = Field("exact", description=COUNT_DESCRIPTION)


def _encode_cursor(msg: Message) -> str:
    return base64.urlsafe_b64encode(json.dumps([msg.date.isoformat() if msg.date else None, msg.pk]).encode()).decode()


def _decode_cursor(cursor: str) -> tuple[datetime, int]:
    try:
        date_s, pk = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        date, pk = datetime.fromisoformat(date_s), int(pk)
        if not 1 <= pk <= MAX_DB_ID:
            raise ValueError(pk)
        return date, pk
    except Exception as exc:
        raise InvalidInput("cursor is not valid: pass next_cursor from the previous page unchanged", field="cursor") from exc


def _summary(m: Message) -> dict[str, Any]:
    return {
        "id": m.pk, "message_id": m.message_id, "subject": m.subject, "from_address": m.from_address,
        "from_name": m.from_name, "date": m.date, "direction": m.direction, "thread": m.thread_id,
        "state": m.state, "has_attachments": m.has_attachments, "is_auto_reply": m.is_auto_reply, "is_bulk": m.is_bulk,
    }


@router.get("", response=MessagePage)
def list_messages(request: HttpRequest, filters: Query[MessageFilters]) -> dict[str, Any]:
    qs: QuerySet[Message] = messages_for_user(request.user)
    if filters.mailbox is not None:
        mb = access_mailbox_for_user(request.user, filters.mailbox)
        src = Source.objects.filter(message=OuterRef("pk"), mailbox=mb)
        if filters.folder is not None:
            src = src.filter(folder_id=filters.folder)
        qs = qs.filter(Exists(src))
    elif filters.folder is not None:
        raise InvalidInput("folder needs mailbox too", field="folder")
    if filters.since:
        qs = qs.filter(date__gte=filters.since)
    if filters.until:
        qs = qs.filter(date__lt=filters.until)
    if filters.thread is not None:
        qs = qs.filter(thread_id=filters.thread)
    # A message is listed once it is threaded; earlier stages only when asked for.
    state = filters.state or Message.State.LINKED
    if state != "any":
        if state not in Message.State.values:
            raise InvalidInput(f"state must be one of {', '.join(Message.State.values)} or any", field="state")
        qs = qs.filter(state=state)
    counted = count_rows(qs, filters.count)
    if filters.cursor:
        date, pk = _decode_cursor(filters.cursor)
        qs = qs.filter(Q(date__lt=date) | Q(date=date, id__lt=pk))
    rows = list(
        qs.order_by("-date", "-id").only(*[
            "id", "message_id", "subject", "from_address", "from_name", "date", "direction", "thread_id", "state",
            "has_attachments", "is_auto_reply", "is_bulk",
        ])[: filters.limit + 1]
    )
    more = len(rows) > filters.limit
    rows = rows[: filters.limit]
    return {"items": [_summary(m) for m in rows], "next_cursor": _encode_cursor(rows[-1]) if more and rows else None,
            **counted}


@router.get("/{message_id}", response=MessageDetail)
def get_message(request: HttpRequest, message_id: int) -> dict[str, Any]:
    m = access_message_for_user(request.user, message_id)
    parts = list(m.participants.all().order_by("id"))
    addr = [{"address": p.address, "name": p.name, "role": p.role, "contact": p.contact_id} for p in parts]
    sources = m.sources.select_related("folder").order_by("id")
    body = message_body(m.pk)
    return {
        **_summary(m),
        "warnings": [{"code": w.code, "message": w.message} for w in message_warnings(m, parts)],
        "in_reply_to": m.in_reply_to, "references": m.references,
        "to": [a for a in addr if a["role"] == "to"], "cc": [a for a in addr if a["role"] == "cc"],
        "participants": addr, "text": body.text, "reply_text": body.reply_text, "html": body.html,
        "attachments": [
            {"id": a.pk, "filename": a.filename, "content_type": a.content_type, "size": a.size,
             "content_id": a.content_id, "inline": a.inline, "url": f"/api/v1/messages/{m.pk}/attachments/{a.pk}"}
            for a in m.attachments.all().order_by("id")
        ],
        "bounce": m.bounce, "auth": m.auth, "errors": m.parse_errors, "routing": m.routing,
        "sources": [
            {"kind": s.kind, "mailbox": s.mailbox_id, "folder": s.folder.name if s.folder else None,
             "uidvalidity": s.uidvalidity, "uid": s.uid, "internal_date": s.internal_date}
            for s in sources
        ],
        "received_at": m.received_at, "size": m.size, "last_error": m.last_error,
    }


def file_response(data: bytes, filename: str, content_type: str) -> HttpResponse:
    resp = HttpResponse(data, content_type=content_type)
    resp["Content-Disposition"] = content_disposition(filename, inline=False)
    resp["X-Content-Type-Options"] = "nosniff"
    resp["Content-Security-Policy"] = "default-src 'none'; sandbox"
    return resp


@router.get("/{message_id}/raw", response={200: None}, summary="Download the raw message (.eml)")
def get_raw(request: HttpRequest, message_id: int) -> HttpResponse:
    m = access_message_for_user(request.user, message_id)
    return file_response(m.raw.read(), f"message-{m.pk}.eml", "message/rfc822")


@router.get("/{message_id}/attachments/{attachment_id}", response={200: None})
def get_attachment(request: HttpRequest, message_id: int, attachment_id: int) -> HttpResponse:
    from mailroom.parsing.mime import extract_part

    m = access_message_for_user(request.user, message_id)
    att = Attachment.objects.filter(message=m, pk=attachment_id).first()
    if att is None:
        raise NotFound(f"attachment {attachment_id} not found on message {message_id}")
    data = extract_part(m.raw.read(), att.part_path)
    # Never let the browser render what a stranger sent: octet-stream unless it is an image.
    ctype = att.content_type if att.content_type.startswith("image/") and att.content_type != "image/svg+xml" else "application/octet-stream"
    return file_response(data, att.filename or f"attachment-{att.pk}", ctype)
