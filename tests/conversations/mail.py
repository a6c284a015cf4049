"""Building real messages for linking tests and running them through the pipeline."""

from __future__ import annotations

from datetime import datetime
from email.utils import format_datetime
from typing import Any

from mailroom.conversations.models import Message
from mailroom.conversations.pipeline import drain
from mailroom.ingest.rawstore import IncomingRaw, store_batch


def raw_email(
    *,
    mid: str,
    frm: str,
    to: str = "manager0@company.test",
    subject: str = "Hello",
    date: datetime,
    irt: str | None = None,
    refs: list[str] | None = None,
    cc: str | None = None,
    extra: dict[str, str] | None = None,
    body: str = "Hello there.",
) -> bytes:
    lines = [f"Message-ID: <{mid}>"] if mid else []
    lines += [f"From: {frm}", f"To: {to}"]
    if cc:
        lines.append(f"Cc: {cc}")
    lines += [f"Subject: {subject}", f"Date: {format_datetime(date)}"]
    if irt:
        lines.append(f"In-Reply-To: <{irt}>")
    if refs:
        lines.append("References: " + " ".join(f"<{r}>" for r in refs))
    for k, v in (extra or {}).items():
        lines.append(f"{k}: {v}")
    lines += ["MIME-Version: 1.0", "Content-Type: text/plain; charset=utf-8", "", body, ""]
    return "\r\n".join(lines).encode()


_n = [0]


def ingest(team: Any, mailbox: Any, *raws: bytes, kind: str = "lmtp", folder: Any = None) -> list[Message]:
    """Store the messages (as the relay/IMAP would) and run the pipeline; return them in order."""
    items = []
    for raw in raws:
        _n[0] += 1
        items.append(
            IncomingRaw(raw=raw, key=f"test:{_n[0]}") if folder is None else IncomingRaw(raw=raw, uid=_n[0])
        )
    res = store_batch(
        team_id=team.pk,
        items=items,
        kind=kind if folder is None else "imap",
        mailbox=mailbox,
        folder=folder,
        uidvalidity=folder.uidvalidity if folder is not None else None,
    )
    drain()
    return [Message.objects.get(pk=pk) for pk in res.message_pks]
