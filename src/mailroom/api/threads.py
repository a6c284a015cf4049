"""/api/v1/threads: list, view with messages (reply tree, routing reasons), merge, split a message out,
accept/reject an unverified claim, set the thread's deal."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.http import HttpRequest
from ninja import Router, Schema

from mailroom.api.counting import CountedPage, CountParam, count_rows
from mailroom.api.inputs import InputSchema, QueryText
from mailroom.api.params import id_query, limit_query
from mailroom.conversations import threads as services
from mailroom.conversations.access import (
    access_message_for_user,
    access_thread_for_user,
    threads_for_user,
)
from mailroom.conversations.models import Thread
from mailroom.conversations.selectors import MAX_LIMIT, thread_list, thread_messages
from mailroom.core.errors import InvalidInput
from mailroom.crm.access import access_deal_for_user

router = Router(tags=["threads"])


class ThreadOut(Schema):
    id: int
    team: int
    subject: str
    first_message_at: datetime | None
    last_message_at: datetime | None
    message_count: int
    deal: int | None
    deal_source: str
    deal_candidates: list[int]
    verification: str
    claimed_thread: int | None
    participants: list[str]


class ThreadMessageOut(Schema):
    id: int
    message_id: str
    date: datetime | None
    direction: str
    subject: str
    from_address: str
    from_name: str
    to: list[str]
    cc: list[str]
    mailboxes: list[int]
    snippet: str
    parent: int | None
    routing: dict[str, Any] | None


class ThreadDetail(ThreadOut):
    messages: list[ThreadMessageOut]


class ThreadPage(CountedPage):
    items: list[ThreadOut]
    next_cursor: str | None


class MergeIn(InputSchema):
    thread_id: int  # the thread to absorb into this one


class SplitIn(InputSchema):
    message_id: int


class DealIn(InputSchema):
    deal_id: int | None


def thread_out(t: Thread) -> dict[str, Any]:
    return {
        "id": t.pk,
        "team": t.team_id,
        "subject": t.subject,
        "first_message_at": t.first_message_at,
        "last_message_at": t.last_message_at,
        "message_count": t.message_count,
        "deal": t.deal_id,
        "deal_source": t.deal_source,
        "deal_candidates": list(t.deal_candidates or []),
        "verification": t.verification,
        "claimed_thread": t.claimed_thread_id,
        "participants": list(t.participants or []),
    }


def thread_detail(t: Thread) -> dict[str, Any]:
    msgs = thread_messages(thread=t)
    return {
        **thread_out(t),
        "messages": [
            {
                **{k: getattr(m, k) for k in ThreadMessageOut.model_fields},
                "to": list(m.to),
                "cc": list(m.cc),
                "mailboxes": list(m.mailboxes),
            }
            for m in msgs
        ],
    }


@router.get("", response=ThreadPage)
def list_threads(
    request: HttpRequest,
    cursor: QueryText | None = None,
    limit: int = limit_query(50, MAX_LIMIT),
    verification: QueryText | None = None,
    deal_id: int | None = id_query(),
    count: CountParam = "exact",
) -> dict[str, Any]:
    page = thread_list(
        threads=threads_for_user(request.user),
        cursor=cursor,
        limit=limit,
        verification=verification,
        deal_id=deal_id,
    )
    return {"items": [thread_out(t) for t in page.items], "next_cursor": page.next_cursor,
            **count_rows(page.matching, count)}


@router.get("/{thread_id}", response=ThreadDetail)
def get_thread(request: HttpRequest, thread_id: int) -> dict[str, Any]:
    return thread_detail(access_thread_for_user(request.user, thread_id))


@router.post("/{thread_id}/merge", response=ThreadDetail)
def merge_threads(request: HttpRequest, thread_id: int, payload: MergeIn) -> dict[str, Any]:
    survivor = access_thread_for_user(request.user, thread_id)
    absorbed = access_thread_for_user(request.user, payload.thread_id)
    return thread_detail(services.thread_merge(survivor=survivor, absorbed=absorbed, user=request.user))


@router.post("/{thread_id}/split", response={201: ThreadDetail})
def split_message(request: HttpRequest, thread_id: int, payload: SplitIn) -> tuple[int, dict[str, Any]]:
    thread = access_thread_for_user(request.user, thread_id)
    message = access_message_for_user(request.user, payload.message_id)
    if message.thread_id != thread.pk:
        raise InvalidInput(f"message {message.pk} is not in thread {thread.pk}", field="message_id")
    return 201, thread_detail(services.thread_split_message(message=message, user=request.user))


@router.post("/{thread_id}/accept", response=ThreadDetail)
def accept_thread(request: HttpRequest, thread_id: int) -> dict[str, Any]:
    thread = access_thread_for_user(request.user, thread_id)
    return thread_detail(services.thread_accept(thread=thread, user=request.user))


@router.post("/{thread_id}/reject", response=ThreadOut)
def reject_thread(request: HttpRequest, thread_id: int) -> dict[str, Any]:
    thread = access_thread_for_user(request.user, thread_id)
    return thread_out(services.thread_reject(thread=thread, user=request.user))


@router.put("/{thread_id}/deal", response=ThreadOut)
def set_thread_deal(request: HttpRequest, thread_id: int, payload: DealIn) -> dict[str, Any]:
    thread = access_thread_for_user(request.user, thread_id)
    deal = access_deal_for_user(request.user, payload.deal_id) if payload.deal_id is not None else None
    return thread_out(services.thread_set_deal(thread=thread, deal=deal, user=request.user))


ROUTERS = [("/threads", router)]
