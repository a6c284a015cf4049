"""Serving attachments: a safe download file name and its ``Content-Disposition`` value.

RFC 6266 with an RFC 5987 ``filename*`` (UTF-8, percent-encoded) plus an ASCII ``filename`` fallback
for old clients. Path separators, control characters, quotes and Windows-reserved names are
neutralised, so the name is safe to hand to a browser or write to a user's disk.
"""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import quote

_RESERVED = re.compile(r"^(?:CON|PRN|AUX|NUL|COM[1-9]|LPT[1-9])(?:\..*)?$", re.I)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_UNSAFE = re.compile(r'[\\/:*?"<>|]')
MAX_NAME = 200


def safe_filename(name: str, default: str = "attachment") -> str:
    """A file name without directories, control characters or characters that are illegal on Windows."""
    name = unicodedata.normalize("NFC", name or "")
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = _CONTROL.sub("", name)
    name = _UNSAFE.sub("_", name).strip().strip(".").strip()
    if not name:
        return default
    if _RESERVED.match(name):
        name = "_" + name
    if len(name) > MAX_NAME:
        stem, dot, ext = name.rpartition(".")
        name = (stem[: MAX_NAME - len(ext) - 1] + dot + ext) if dot and len(ext) <= 10 else name[:MAX_NAME]
    return name


def _ascii_fallback(name: str) -> str:
    folded = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    folded = re.sub(r"[^A-Za-z0-9._ ()\[\]-]", "", folded).strip()
    stem, dot, ext = folded.rpartition(".")
    if not stem.strip(" ._-") and dot:
        return (
            ("attachment" if not ext else f"attachment.{ext}") if not folded.strip(" .") else folded.strip()
        )
    return folded or "attachment"


def content_disposition(filename: str, *, inline: bool = False) -> str:
    """``attachment; filename="ascii"; filename*=UTF-8''percent-encoded`` (RFC 6266 / RFC 5987)."""
    name = safe_filename(filename)
    kind = "inline" if inline else "attachment"
    fallback = _ascii_fallback(name).replace('"', "")
    return f"{kind}; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"
