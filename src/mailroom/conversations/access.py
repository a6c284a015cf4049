"""Access helpers for conversations: the only door to threads and messages for views (404 on other teams)."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from mailroom.accounts.access import scope_to_user
from mailroom.conversations.models import Message, Thread
from mailroom.core.errors import NotFound


def threads_for_user(user: Any) -> QuerySet[Thread]:
    return scope_to_user(Thread.objects.all(), user)


def access_thread_for_user(user: Any, thread_id: int) -> Thread:
    thread = threads_for_user(user).filter(pk=thread_id).first()
    if thread is None:
        raise NotFound(f"thread {thread_id} not found")
    return thread


def messages_for_user(user: Any) -> QuerySet[Message]:
    return scope_to_user(Message.objects.all(), user)


def access_message_for_user(user: Any, message_id: int) -> Message:
    message = messages_for_user(user).filter(pk=message_id).first()
    if message is None:
        raise NotFound(f"message {message_id} not found")
    return message
