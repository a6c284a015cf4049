"""Fast header summary for the import path.

The sync stores raw bytes and needs only a handful of headers to dedupe and thread. Parsing just
the header block (with the same byte-level reader as the full parser, ``rawheaders``) is many times
cheaper than a full MIME parse; the body is left to the parsing workers. The full parser
(``mime.parse_message``) uses the same Message-ID synthesis and content hash, so both agree.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import getaddresses, parseaddr, parsedate_tz
from functools import lru_cache

from mailroom.parsing.rawheaders import parse_header_block
from mailroom.parsing.records import pickled_by_fields

_HEADER_END = re.compile(rb"\r?\n\r?\n")
# RFC 5322 3.6.4 lets a References field be trimmed: keep the first (the thread's root) and the last
# MAX_REFERENCES - 1. Outgoing replies write no more, and no more of a received one is stored: a
# sender's 5,000 ids cost every later read (routing, the thread's reply tree) for nothing.
MAX_REFERENCES = 20
_MSGID = re.compile(r"<([^<>\s]+)>")


@pickled_by_fields
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


# Control characters but the whitespace that separates ids (a database text column takes no NUL).
_ID_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")
_ADDR_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_OTHER_SURROGATE = re.compile("[\ud800-\udc7f\udd00-\udfff]")  # surrogateescape uses U+DC80-U+DCFF


def storable_text(value: str) -> str:
    """A raw header value (ids, routing headers) with its 8-bit bytes (surrogate escapes of the raw
    header) as UTF-8 text where they are UTF-8 (RFC 6532 ids, as Cyrillic ones), as ``\\xNN`` where
    not, and without control characters: no database takes a lone surrogate, PostgreSQL takes no
    NUL, and such a Message-ID made its whole import batch fail, again at every retry."""
    if not value.isascii():
        value = _OTHER_SURROGATE.sub("\ufffd", value)  # a surrogate that stands for no raw byte
        value = value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return _ID_CONTROL.sub("", value)


def msgid_list(value: str | None) -> tuple[str, ...]:
    """The ids (without angle brackets) of a Message-ID, In-Reply-To or References value, in order,
    each once; text a database stores (``storable_text``), the same wherever a header names it."""
    if not value:
        return ()
    value = storable_text(value)
    ids = _MSGID.findall(value)
    if not ids:
        stripped = value.strip()
        return (stripped,) if stripped and " " not in stripped else ()
    return tuple(dict.fromkeys(ids))


def trim_references(refs: Iterable[str], limit: int = MAX_REFERENCES) -> tuple[str, ...]:
    """Keep the first (the thread root) and the last ``limit - 1`` references, de-duplicated."""
    ids = list(dict.fromkeys(r for r in refs if r))
    if len(ids) <= limit:
        return tuple(ids)
    return (ids[0], *ids[-(limit - 1) :])


def reference_list(value: str | None) -> tuple[str, ...]:
    """The ids of a References or In-Reply-To value, as stored: ``msgid_list``, trimmed to the first
    and the last ``MAX_REFERENCES - 1``."""
    return trim_references(msgid_list(value))


def _decode(value: object) -> str:
    from mailroom.parsing.charsets import decode_header_value

    return decode_header_value(value)


def normalize_address(addr: str) -> str:
    """Lower-cased addr-spec without quotes, brackets, ``mailto:`` or trailing dots; "" if not one."""
    addr = addr.strip().strip("<>\"' ").lower()
    if addr.startswith("mailto:"):
        addr = addr[7:]
    addr = addr.rstrip(".")
    if "@" not in addr or " " in addr or _ADDR_CONTROL.search(addr):  # no control characters (a NUL)
        return ""
    local, _, domain = addr.rpartition("@")
    if not local or not domain:
        return ""
    return addr


def parse_addresses(values: list[str] | None) -> tuple[Address, ...]:
    """Addresses of one or more header values, display names decoded (RFC 2047 or raw 8-bit)."""
    if not values:
        return ()
    return _parse_addresses(tuple(str(v) for v in values))


# One list item of the everyday forms: ``Name <a@b>``, ``"Name, Quoted" <a@b>``, ``<a@b>``, ``a@b``.
# Anything else (comments, groups, route addresses, quoted local parts, empty items, line breaks in
# a quoted name) goes to the stdlib parser, whose answer the fast path must equal (tested).
_ADDR_SPEC = r"[^<>\"(),;:\\\[\]\s@]+@[^<>\"(),;:\\\[\]\s@]+"
_ITEM = re.compile(
    r'\s*(?:"((?:[^"\\\r\n]|\\[^\r\n])*)"\s*|([^"<>,;:()\[\]\\@]*?)\s*)<(' + _ADDR_SPEC + r")>\s*(?:,|\Z)"
    r"|\s*(" + _ADDR_SPEC + r")\s*(?:,|\Z)"
)
_QUOTED_PAIR = re.compile(r"\\(.)")


def _fast_pairs(value: str) -> list[tuple[str, str]] | None:
    """``getaddresses([value])`` for the everyday forms, or None when ``value`` is anything else."""
    pairs: list[tuple[str, str]] = []
    pos, end = 0, len(value)
    while pos < end:
        m = _ITEM.match(value, pos)
        if m is None:
            return None
        quoted, plain, addr, bare = m.groups()
        if bare is not None:
            pairs.append(("", bare))
        elif quoted is not None:
            pairs.append((_QUOTED_PAIR.sub(r"\1", quoted) if "\\" in quoted else quoted, addr))
        else:
            pairs.append((" ".join(plain.split()), addr))
        pos = m.end()
    return pairs


def parse_one_address(value: str) -> tuple[str, str]:
    """``email.utils.parseaddr(value)``, with the fast path for the everyday forms."""
    fast = _fast_pairs(value)
    return fast[0] if fast is not None and len(fast) == 1 else parseaddr(value)


def _pairs(values: tuple[str, ...]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for value in values:
        fast = _fast_pairs(value)
        out.extend(fast if fast is not None else getaddresses([value]))
    return out


@lru_cache(maxsize=8192)
def _parse_addresses(values: tuple[str, ...]) -> tuple[Address, ...]:
    # Cached: a mailbox's correspondents repeat, and the stdlib address parser is slow.
    out: list[Address] = []
    seen: set[str] = set()
    for name, addr in _pairs(values):
        addr = normalize_address(_decode(addr) if not addr.isascii() else addr)
        if not addr or addr in seen:
            continue
        seen.add(addr)
        dname = _decode(name) if name else ""
        if dname.lower() == addr:
            dname = ""
        out.append(Address(address=addr, name=dname))
    return tuple(out)


_addresses = parse_addresses


def synthesise_message_id(raw: bytes) -> str:
    """Deterministic Message-ID for a message that has none (without angle brackets)."""
    digest = hashlib.sha256(raw).hexdigest()[:32]
    return f"mr-synth-{digest}@mailroom.invalid"


def parse_date(value: str) -> datetime | None:
    """RFC 5322 date -> timezone-aware datetime (naive/-0000 taken as UTC); None if unparseable."""
    if not value:
        return None
    try:
        tup = parsedate_tz(value)
        if tup is None:
            return None
        offset = tup[9]
        from datetime import timedelta, timezone

        tz = UTC if offset is None else timezone(timedelta(seconds=offset))
        year = tup[0]
        if year < 100:
            year += 2000 if year < 50 else 1900
        return datetime(year, tup[1], tup[2], tup[3], tup[4], min(tup[5], 59), tzinfo=tz)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def content_hash_of(message_id: str, date: str, from_: str, subject: str, body: bytes) -> str:
    h = hashlib.sha256()
    for part in (message_id, date, from_, subject):
        h.update(part.strip().encode("utf-8", "surrogateescape"))
        h.update(b"\0")
    # Line endings differ between copies (CRLF on IMAP, LF on disk): drop every CR before hashing.
    # translate() runs at ~3x the speed of replace() on large bodies; hashlib releases the GIL. The
    # trailing newlines are cut off through a view: rstrip() would copy the whole body once more.
    bare = body.translate(None, b"\r")
    end = len(bare)
    while end and bare[end - 1] == 0x0A:
        end -= 1
    h.update(memoryview(bare)[:end])
    return h.hexdigest()


def summarize_headers(raw: bytes) -> HeaderSummary:
    """Read what the sync needs from a message. Never raises on malformed input."""
    block, body_at = parse_header_block(raw)
    body = raw[body_at:]
    ids = msgid_list(block.get("message-id"))
    date_hdr = block.get_raw("date") or ""
    from_hdr = block.get_raw("from") or ""
    subj_hdr = block.get_raw("subject") or ""
    synthesised = not ids
    message_id = ids[0] if ids else synthesise_message_id(raw)
    return HeaderSummary(
        message_id=message_id,
        message_id_synthesised=synthesised,
        in_reply_to=reference_list(block.get("in-reply-to")),
        references=reference_list(block.get("references")),
        subject=_decode(block.get("subject")),
        from_=parse_addresses(block.get_all("from")),
        to=parse_addresses(block.get_all("to")),
        cc=parse_addresses(block.get_all("cc")),
        date=parse_date(unfold_value(date_hdr)),
        content_hash=content_hash_of(message_id, date_hdr, from_hdr, subj_hdr, body),
        header_bytes=body_at,
    )


def unfold_value(value: str) -> str:
    from mailroom.parsing.rawheaders import unfold

    return unfold(value)
