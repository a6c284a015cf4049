"""Access helpers for outbound objects (the only door for api/ and web/)."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from mailroom.accounts.access import scope_to_user
from mailroom.conversations.models import Message
from mailroom.core.errors import NotFound
from mailroom.outbound.models import OutboxMessage, RelayHold, Template


def outbox_for_user(user: Any) -> QuerySet[OutboxMessage]:
    return scope_to_user(OutboxMessage.objects.all(), user)


def access_outbox_for_user(user: Any, outbox_id: int) -> OutboxMessage:
    row = outbox_for_user(user).filter(id=outbox_id).first()
    if row is None:
        raise NotFound(f"outbox message {outbox_id} not found")
    return row


def access_message_in_team(user: Any, message_id: int, team_id: int, *, field: str = "in_reply_to") -> Message:
    """A message the user may see, in ``team_id`` (the mailbox's team): what a reply may refer to."""
    msg = scope_to_user(Message.objects.filter(team_id=team_id), user).filter(id=message_id).first()
    if msg is None:
        raise NotFound(f"message {message_id} not found", field=field)
    return msg


def access_template_in_team(user: Any, name_or_id: str, team_id: int) -> Template:
    qs = scope_to_user(Template.objects.filter(team_id=team_id), user)
    tpl = qs.filter(id=int(name_or_id)).first() if name_or_id.isdigit() else qs.filter(name=name_or_id).first()
    if tpl is None:
        raise NotFound(f"template {name_or_id!r} not found", field="template")
    return tpl


def relay_holds_for_user(user: Any) -> QuerySet[RelayHold]:
    return scope_to_user(RelayHold.objects.all(), user)


def access_relay_hold_for_user(user: Any, hold_id: int) -> RelayHold:
    hold = relay_holds_for_user(user).select_related("token").filter(id=hold_id).first()
    if hold is None:
        raise NotFound(f"held relay mail {hold_id} not found")
    return hold
