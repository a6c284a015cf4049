"""Low-level RFC 5322 header and MIME parameter parsing on bytes (no stdlib ``email`` machinery).

Shared by the fast header summary (headers.py) and the full parser (mime.py). Header values are
kept as text where 8-bit bytes are surrogate escapes (``ascii``/``surrogateescape``), so the exact
bytes can be recovered for charset detection later.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import unquote_to_bytes

MAX_HEADER_BLOCK = 1024 * 1024  # bytes of one header block that are read as headers
MAX_HEADER_VALUE = 64 * 1024  # characters kept of one header value
MAX_HEADERS = 2000  # header fields kept per block
# Id lists whose end matters as much as their start: References ends with the nearest parent (and
# begins with the thread's root). Of one too long, the start and the end are kept (an id cut in two
# is no id and is dropped).
_ID_LIST_HEADERS = frozenset({"references", "in-reply-to"})

_NAME = re.compile(rb"[!-9;-~]+[ \t]*:")


@dataclass(slots=True)
class HeaderBlock:
    """Header fields of one entity: lower-cased name -> values, in order; raw values keep folding."""

    fields: list[tuple[str, str]] = field(default_factory=list)
    index: dict[str, list[str]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    size: int = 0

    def get_raw(self, name: str) -> str | None:
        """First value as found (folding CRLF kept, leading blank and final newline stripped)."""
        values = self.index.get(name)
        return values[0] if values else None

    def get(self, name: str, default: str = "") -> str:
        """First value, unfolded."""
        values = self.index.get(name)
        return unfold(values[0]) if values else default

    def get_all(self, name: str) -> list[str]:
        return [unfold(v) for v in self.index.get(name, ())]

    def __contains__(self, name: object) -> bool:
        return name in self.index


_FOLD = re.compile(r"\r?\n(?=[ \t])")


def unfold(value: str) -> str:
    if "\n" not in value:
        return value
    return _FOLD.sub("", value).replace("\r", "").replace("\n", " ")


def find_header_end(data: bytes, start: int, end: int) -> int:
    """Offset where the body starts (after the blank line), or ``end`` for a header-only entity."""
    if start >= end:
        return end
    if data[start] == 0x0A:  # blank first line: no headers
        return start + 1
    if data.startswith(b"\r\n", start):
        return start + 2
    # Look for the CRLF form first and search the LF form only before it: a CRLF message has no
    # "\n\n", and searching for it would scan the whole body (megabytes of attachment).
    pos_crlf = data.find(b"\n\r\n", start, end)
    pos = data.find(b"\n\n", start, end if pos_crlf == -1 else pos_crlf + 1)
    if pos == -1 and pos_crlf == -1:
        return end
    if pos == -1 or (pos_crlf != -1 and pos_crlf < pos):
        return pos_crlf + 3
    return pos + 2


def parse_header_block(data: bytes, start: int = 0, end: int | None = None) -> tuple[HeaderBlock, int]:
    """Parse the header block at ``data[start:end]``; return it and the body offset.

    Robust against: an mbox ``From `` first line, a missing blank line (the first line that is
    neither a header nor a continuation starts the body), bare CR line ends, huge blocks (capped).
    """
    if end is None:
        end = len(data)
    block = HeaderBlock()
    body_at = find_header_end(data, start, end)
    if body_at - start > MAX_HEADER_BLOCK:
        block.errors.append("header_block_too_large")
        cut = data.rfind(b"\n", start, start + MAX_HEADER_BLOCK)
        hend = cut + 1 if cut > start else start + MAX_HEADER_BLOCK
    else:
        hend = body_at
    head = data[start:hend]
    if b"\r" in head and b"\n" not in head:
        head = head.replace(b"\r", b"\n")
    lines = head.split(b"\n")
    cur_name: str | None = None
    cur_parts: list[bytes] = []
    consumed = 0
    fields = block.fields
    index = block.index

    def finish() -> None:
        if cur_name is None:
            return
        raw = b"\n".join(cur_parts).rstrip(b"\r\n")
        value = raw.decode("ascii", "surrogateescape") if not raw.isascii() else raw.decode("ascii")
        if len(value) > MAX_HEADER_VALUE:
            if cur_name in _ID_LIST_HEADERS:
                half = MAX_HEADER_VALUE // 2
                value = f"{value[:half]} {value[-half:]}"
            else:
                value = value[:MAX_HEADER_VALUE]
            if "header_value_truncated" not in block.errors:
                block.errors.append("header_value_truncated")
        if len(fields) >= MAX_HEADERS:
            if "too_many_headers" not in block.errors:
                block.errors.append("too_many_headers")
            return
        fields.append((cur_name, value))
        index.setdefault(cur_name, []).append(value)

    body_override: int | None = None
    for i, line in enumerate(lines):
        if not line or line == b"\r":
            consumed += len(line) + 1
            break
        first = line[0]
        if first in (0x20, 0x09):
            if cur_name is not None:
                cur_parts.append(line)
            consumed += len(line) + 1
            continue
        m = _NAME.match(line)
        if m is None:
            if i == 0 and line.startswith(b"From "):
                consumed += len(line) + 1
                continue
            # Not a header: the body starts here (missing separator).
            body_override = start + consumed
            if cur_name is not None or fields:
                block.errors.append("missing_header_body_separator")
            break
        finish()
        name_end = m.end()
        cur_name = line[: name_end - 1].rstrip(b" \t").decode("ascii").lower()
        rest = line[name_end:].lstrip(b" \t")
        cur_parts = [rest]
        consumed += len(line) + 1
    finish()
    block.size = hend - start
    if body_override is not None:
        return block, body_override
    return block, body_at


# --- MIME parameters (RFC 2045 + RFC 2231) ---------------------------------------------------------

_PARAM = re.compile(
    r"""\s*([^\s=;"]+)\s*(?:=\s*("(?:[^"\\]|\\.)*"?|[^;]*))?\s*(?:;|$)""",
    re.S,
)


def parse_params(value: str) -> tuple[str, dict[str, str]]:
    """``text/plain; charset="x"; name*0*=...`` -> ("text/plain", {"charset": "x", "name": ...}).

    RFC 2231 continuations and charset'lang' prefixes are assembled and decoded; RFC 2047 words and
    raw 8-bit bytes in quoted values are decoded too. Keys are lower-cased.
    """
    from mailroom.parsing.charsets import decode_bytes, decode_header_value

    value = unfold(value)
    head, sep, rest = value.partition(";")
    main = head.strip().strip('"').lower()
    params: dict[str, str] = {}
    if not sep:
        return main, params
    ext: dict[str, list[tuple[int, bool, str]]] = {}
    for m in _PARAM.finditer(rest):
        key = m.group(1).lower()
        raw = m.group(2)
        if raw is None:
            continue
        raw = raw.strip()
        if raw.startswith('"'):
            raw = raw[1:-1] if raw.endswith('"') and len(raw) > 1 else raw[1:]
            raw = re.sub(r"\\(.)", r"\1", raw)
        if "*" in key:
            base, _, tail = key.partition("*")
            encoded = tail.endswith("*") or tail == ""
            num_s = tail.rstrip("*")
            num = int(num_s) if num_s.isdigit() else 0
            ext.setdefault(base, []).append((num, encoded, raw))
        elif key not in params:
            params[key] = raw
    for base, segs in ext.items():
        segs.sort(key=lambda s: s[0])
        charset = None
        chunks: list[bytes] = []
        for n, (_, encoded, raw) in enumerate(segs):
            if encoded:
                if n == 0 and raw.count("'") >= 2:
                    charset, _lang, raw = raw.split("'", 2)
                chunks.append(unquote_to_bytes(raw.encode("ascii", "surrogateescape")))
            else:
                chunks.append(raw.encode("ascii", "surrogateescape"))
        params[base] = decode_bytes(b"".join(chunks), charset or None)
    for key in ("name", "filename"):
        if key in params:
            params[key] = decode_header_value(params[key])
    return main, params
