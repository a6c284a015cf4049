"""Writes on conversations owned by the pipeline: storing the full parse of a message."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from django.conf import settings
from django.db import transaction

from mailroom.conversations.models import Attachment, Message, MessageBody, Participant
from mailroom.core.db import insert_dicts, update_rows
from mailroom.parsing.mime import ParsedMessage
from mailroom.parsing.workers import ParseJob, parse_pool


@functools.cache
def _field_names(cls: type) -> tuple[str, ...] | None:
    """The fields of a dataclass type; None for any other type."""
    if dataclasses.is_dataclass(cls):
        return tuple(f.name for f in dataclasses.fields(cls))
    return None


_LEAVES = frozenset({str, int, float, bool, type(None)})


def _as_dict(value: Any) -> Any:
    """What ``dataclasses.asdict`` gives for JSON (sequences as lists), without its deep copy of
    every leaf (a third of the cost of storing a parse); leaves, most of the values, are returned
    first (``is_dataclass`` on every value took half of this function's time)."""
    kind: type = type(value)
    if kind in _LEAVES:
        return value
    if kind is list or kind is tuple:
        return [_as_dict(v) for v in value]
    if kind is dict:
        return {k: _as_dict(v) for k, v in value.items()}
    names = _field_names(kind)
    if names is not None:
        return {name: _as_dict(getattr(value, name)) for name in names}
    if isinstance(value, list | tuple):  # subclasses (named tuples)
        return [_as_dict(v) for v in value]
    if isinstance(value, dict):
        return {k: _as_dict(v) for k, v in value.items()}
    return value


def _participants(message: Message, parsed: ParsedMessage) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for role, addrs in (
        (Participant.Role.FROM, parsed.from_),
        (Participant.Role.SENDER, parsed.sender),
        (Participant.Role.REPLY_TO, parsed.reply_to),
        (Participant.Role.TO, parsed.to),
        (Participant.Role.CC, parsed.cc),
        (Participant.Role.BCC, parsed.bcc),
    ):
        for a in addrs:
            key = (role, a.address)
            if key in seen or not a.address:
                continue
            seen.add(key)
            rows.append({"message_id": message.pk, "role": role, "address": a.address[:320],
                         "name": (a.name or "")[:300]})
    return rows


def _parsed_fields(message: Message, parsed: ParsedMessage) -> None:
    bounce = _as_dict(parsed.bounce)
    message.subject = parsed.subject[:5000]
    if parsed.date is not None and parsed.date_source == "header":
        message.date = parsed.date
    message.is_auto_reply = parsed.is_auto_reply
    message.is_bulk = parsed.is_bulk
    message.bounce = bounce if bounce and bounce.get("is_bounce") else None
    message.auth = _as_dict(parsed.auth)
    message.parse_errors = list(parsed.errors)
    message.has_attachments = any(not a.inline for a in parsed.attachments)
    previous = message.routing_headers or {}
    message.routing_headers = {
        # What the import path knew (e.g. Gmail's X-GM-THRID from FETCH) survives the parse.
        **{k: v for k, v in previous.items() if v},
        **{k: v for k, v in _as_dict(parsed.routing).items() if v or k not in previous},
        "auto_reply_reason": parsed.auto_reply_reason,
        "bulk_reason": parsed.bulk_reason,
        "has_remote_images": parsed.has_remote_images,
    }
    message.state = Message.State.PARSED


PARSED_FIELDS = [
    "subject", "date", "is_auto_reply", "is_bulk", "bounce", "auth",
    "parse_errors", "has_attachments", "routing_headers", "state",
]


def parse_jobs(items: list[tuple[Message, bytes | str]]) -> list[ParsedMessage | Exception]:
    """Parse several messages (in the parse worker processes where configured); results in order,
    an exception in place of a message that could not be parsed (or whose bytes could not be read).
    Each message comes with its raw bytes or their reference in the raw store's segment files
    (``raw_refs_for``)."""
    trusted = tuple(settings.MAILROOM_TRUSTED_AUTHSERV_IDS)
    blob_dir = str(settings.MAILROOM_BLOB_DIR)
    verify = bool(settings.MAILROOM_DKIM_VERIFY)
    servers = tuple(settings.MAILROOM_DNS_SERVERS)
    timeout = float(settings.MAILROOM_DNS_TIMEOUT)
    jobs = [
        ParseJob(
            m.pk,
            raw if isinstance(raw, bytes) else b"",
            m.received_at,
            trusted,
            blob="" if isinstance(raw, bytes) else raw,
            blob_dir="" if isinstance(raw, bytes) else blob_dir,
            content_hash=m.content_hash,
            # Our own copies (Sent folder, outbox) are outgoing whatever they say: nothing to verify.
            verify_dkim=verify and m.direction != Message.Direction.OUTGOING,
            dns_servers=servers,
            dns_timeout=timeout,
        )
        for m, raw in items
    ]
    return parse_pool(settings.MAILROOM_PARSE_PROCESSES, settings.MAILROOM_PARSE_DEADLINE).parse(jobs)


def messages_store_parsed(*, items: list[tuple[Message, ParsedMessage]]) -> None:
    """Store the parse of several messages in one transaction (idempotent: replaces earlier output)."""
    if not items:
        return
    with transaction.atomic():
        pks = [m.pk for m, _ in items]
        Participant.objects.filter(message_id__in=pks).delete()
        Attachment.objects.filter(message_id__in=pks).delete()
        MessageBody.objects.filter(message_id__in=pks).delete()
        participants: list[dict[str, Any]] = []  # rows, not model instances (cheaper to build)
        attachments: list[dict[str, Any]] = []
        bodies = [
            {"message_id": m.pk, "text": p.text, "html": p.html_safe, "reply_text": p.reply_text}
            for m, p in items
            if p.text or p.html_safe or p.reply_text
        ]
        for message, parsed in items:
            participants.extend(_participants(message, parsed))
            attachments.extend(
                {
                    "message_id": message.pk,
                    "filename": a.filename[:500],
                    "content_type": a.content_type[:200],
                    "size": a.size,
                    "content_id": a.content_id[:500],
                    "inline": a.inline,
                    "part_path": a.part_path[:200],
                }
                for a in parsed.attachments
            )
            _parsed_fields(message, parsed)
        insert_dicts(Participant, participants)
        insert_dicts(Attachment, attachments)
        insert_dicts(MessageBody, bodies)
        update_rows(Message, [m for m, _ in items], PARSED_FIELDS)
