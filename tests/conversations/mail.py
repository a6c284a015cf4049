"""Building real messages for linking tests and running them through the pipeline."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime
from typing import Any

from mailroom.conversations.models import Message
from mailroom.conversations.pipeline import drain
from mailroom.ingest.rawstore import IncomingRaw, store_batch

TRUSTED_MX = "mx.company.test"  # the authserv-id tests trust (tests/conftest.py)


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
    authenticated: bool = False,
) -> bytes:
    """``authenticated``: our receiving server (``TRUSTED_MX``, trusted in tests) says the From
    domain's DKIM signature passed and DMARC passed."""
    lines = [f"Message-ID: <{mid}>"] if mid else []
    if authenticated:
        domain = frm.rpartition("@")[2].strip("> ").lower()
        lines.append(
            f"Authentication-Results: {TRUSTED_MX}; dkim=pass header.d={domain}; dmarc=pass header.from={domain}"
        )
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


@dataclass(frozen=True)
class Sent:
    """A copy of our own mail (found in a Sent folder / our outbox): stored as outgoing."""

    raw: bytes


def sent(raw: bytes) -> Sent:
    return Sent(raw)


_n = [0]


def ingest(
    team: Any, mailbox: Any, *raws: bytes | Sent, kind: str = "lmtp", folder: Any = None
) -> list[Message]:
    """Store the messages (as the relay/IMAP would; ``sent(raw)`` as a Sent-folder copy) and run the
    pipeline; return them in order."""
    pks: list[int] = []
    for raw in raws:
        _n[0] += 1
        data = raw.raw if isinstance(raw, Sent) else raw
        item = (
            IncomingRaw(raw=data, key=f"test:{_n[0]}") if folder is None else IncomingRaw(raw=data, uid=_n[0])
        )
        res = store_batch(
            team_id=team.pk,
            items=[item],
            kind=kind if folder is None else "imap",
            mailbox=mailbox,
            folder=folder,
            uidvalidity=folder.uidvalidity if folder is not None else None,
            direction=Message.Direction.OUTGOING if isinstance(raw, Sent) else None,
        )
        pks.extend(res.message_pks)
    drain()
    return [Message.objects.get(pk=pk) for pk in pks]
