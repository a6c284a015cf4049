"""Fast header summary for the import path.

The sync stores raw bytes and needs only a handful of headers to dedupe and thread. Parsing just
the header block (``BytesHeaderParser``) is many times cheaper than a full MIME parse; the body is
left to the parsing workers.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from email import policy
from email.parser import BytesHeaderParser
from email.utils import getaddresses, parsedate_to_datetime

_HEADER_END = re.compile(rb"\r?\n\r?\n")
_MSGID = re.compile(r"<([^<>\s]+)>")
_parser = BytesHeaderParser(policy=policy.compat32)


@dataclass(frozen=True, slots=True)
class Address:
    address: str  # lower-cased addr-spec
    name: str = ""


@dataclass(frozen=True, slots=True)
class HeaderSummary:
    message_id: str  # without angle brackets; synthesised ("mr-synth-<hash>@mailroom.invalid") if missing
    message_id_synthesised: bool
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]
    subject: str
    from_: tuple[Address, ...]
    to: tuple[Address, ...]
    cc: tuple[Address, ...]
    date: datetime | None
    content_hash: str  # sha256 hex of identity headers + body; equal across copies in several mailboxes
    header_bytes: int


def split_header_block(raw: bytes) -> tuple[bytes, bytes]:
    m = _HEADER_END.search(raw)
    if m is None:
        return raw, b""
    return raw[: m.end()], raw[m.end() :]


def msgid_list(value: str | None) -> tuple[str, ...]:
    if not value:
        return ()
    ids = _MSGID.findall(value)
    if not ids:
        stripped = value.strip()
        return (stripped,) if stripped and " " not in stripped else ()
    return tuple(dict.fromkeys(ids))


def _decode(value: object) -> str:
    from mailroom.parsing.charsets import decode_header_value

    return decode_header_value(value)


def _addresses(values: list[str] | None) -> tuple[Address, ...]:
    if not values:
        return ()
    out: list[Address] = []
    for name, addr in getaddresses([str(v) for v in values]):
        addr = addr.strip().lower()
        if not addr or "@" not in addr:
            continue
        out.append(Address(address=addr, name=_decode(name) if name else ""))
    return tuple(out)


def content_hash_of(message_id: str, date: str, from_: str, subject: str, body: bytes) -> str:
    h = hashlib.sha256()
    for part in (message_id, date, from_, subject):
        h.update(part.strip().encode("utf-8", "surrogateescape"))
        h.update(b"\0")
    h.update(body.replace(b"\r\n", b"\n").rstrip(b"\n"))
    return h.hexdigest()


def summarize_headers(raw: bytes) -> HeaderSummary:
    """Read what the sync needs from a message. Never raises on malformed input."""
    head, body = split_header_block(raw)
    msg = _parser.parsebytes(head)
    raw_id = msg.get("Message-ID") or msg.get("Message-Id") or ""
    ids = msgid_list(str(raw_id))
    date_hdr = str(msg.get("Date", "") or "")
    from_hdr = str(msg.get("From", "") or "")
    subj_hdr = str(msg.get("Subject", "") or "")
    synthesised = not ids
    if ids:
        message_id = ids[0]
    else:
        digest = hashlib.sha256(raw).hexdigest()[:32]
        message_id = f"mr-synth-{digest}@mailroom.invalid"
    try:
        date = parsedate_to_datetime(date_hdr) if date_hdr else None
        if date is not None and date.tzinfo is None:
            from datetime import UTC

            date = date.replace(tzinfo=UTC)
    except (TypeError, ValueError, IndexError):
        date = None
    refs = msgid_list(str(msg.get("References", "") or ""))
    irt = msgid_list(str(msg.get("In-Reply-To", "") or ""))
    return HeaderSummary(
        message_id=message_id,
        message_id_synthesised=synthesised,
        in_reply_to=irt,
        references=refs,
        subject=_decode(subj_hdr),
        from_=_addresses(msg.get_all("From")),
        to=_addresses(msg.get_all("To")),
        cc=_addresses(msg.get_all("Cc")),
        date=date,
        content_hash=content_hash_of(message_id, date_hdr, from_hdr, subj_hdr, body),
        header_bytes=len(head),
    )
