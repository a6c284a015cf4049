"""ParsedMessage -> JSON-ready dict (used by ``mailroom parse`` and the REST API)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from mailroom.parsing.headers import Address
from mailroom.parsing.mime import ParsedMessage


def _addrs(addrs: tuple[Address, ...]) -> list[dict[str, str]]:
    return [{"address": a.address, "name": a.name} for a in addrs]


def _dt(d: datetime | None) -> str | None:
    return d.isoformat() if d is not None else None


def parsed_to_dict(p: ParsedMessage, *, include_nested: bool = True) -> dict[str, Any]:
    """A stable, JSON-serialisable view of a parsed message (``html`` is the sanitised HTML)."""
    out: dict[str, Any] = {
        "message_id": p.message_id,
        "message_id_synthesised": p.message_id_synthesised,
        "in_reply_to": list(p.in_reply_to),
        "references": list(p.references),
        "subject": p.subject,
        "from": _addrs(p.from_),
        "sender": _addrs(p.sender),
        "reply_to": _addrs(p.reply_to),
        "to": _addrs(p.to),
        "cc": _addrs(p.cc),
        "bcc": _addrs(p.bcc),
        "delivered_to": _addrs(p.delivered_to),
        "date": _dt(p.date),
        "date_source": p.date_source,
        "text": p.text,
        "reply_text": p.reply_text,
        "html": p.html_safe,
        "has_remote_images": p.has_remote_images,
        "attachments": [
            {
                "filename": a.filename,
                "content_type": a.content_type,
                "size": a.size,
                "inline": a.inline,
                "content_id": a.content_id,
                "part_path": a.part_path,
            }
            for a in p.attachments
        ],
        "calendar": [
            {
                "method": c.method,
                "summary": c.summary,
                "start": _dt(c.start),
                "end": _dt(c.end),
                "organizer": c.organizer,
                "uid": c.uid,
                "location": c.location,
            }
            for c in p.calendar
        ],
        "routing": {k: getattr(p.routing, k) for k in p.routing.__slots__ if getattr(p.routing, k)},
        "is_auto_reply": p.is_auto_reply,
        "auto_reply_reason": p.auto_reply_reason,
        "is_bulk": p.is_bulk,
        "bulk_reason": p.bulk_reason,
        "bounce": {
            "is_bounce": p.bounce.is_bounce,
            "kind": p.bounce.kind,
            "recipients": [
                {
                    "address": r.address,
                    "status": r.status,
                    "action": r.action,
                    "hard": r.hard,
                    "reason": r.reason,
                    "diagnostic": r.diagnostic,
                }
                for r in p.bounce.recipients
            ],
            "original_message_id": p.bounce.original_message_id,
            "is_complaint": p.bounce.is_complaint,
            "feedback_type": p.bounce.feedback_type,
        },
        "auth": {
            "dkim": p.auth.dkim,
            "dkim_domains": list(p.auth.dkim_domains),
            "dmarc": p.auth.dmarc,
            "spf": p.auth.spf,
            "source": p.auth.source,
        },
        "errors": list(p.errors),
        "size": p.size,
        "content_hash": p.content_hash,
    }
    if include_nested:
        out["nested"] = [parsed_to_dict(n, include_nested=False) for n in p.nested]
    return out
