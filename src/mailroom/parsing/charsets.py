"""Charset handling. (Owned by the parsing work; this is the minimal header decoder the import path uses.)"""

from __future__ import annotations

from email.header import decode_header

ALIASES = {
    "cp1251": "windows-1251",
    "win-1251": "windows-1251",
    "windows1251": "windows-1251",
    "koi8r": "koi8-r",
    "koi8u": "koi8-u",
    "x-mac-cyrillic": "mac-cyrillic",
    "utf8": "utf-8",
    "unicode-1-1-utf-8": "utf-8",
}


def normalize_charset(label: str | None) -> str:
    if not label:
        return "utf-8"
    label = label.strip().strip('"').lower()
    return ALIASES.get(label, label)


def decode_bytes(data: bytes, charset: str | None) -> str:
    name = normalize_charset(charset)
    try:
        return data.decode(name)
    except (LookupError, UnicodeDecodeError):
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            from charset_normalizer import from_bytes

            best = from_bytes(data).best()
            return str(best) if best is not None else data.decode("utf-8", "replace")


def decode_header_value(value: object) -> str:
    """Decode every RFC 2047 chunk of a header value, whatever the charsets."""
    text = str(value)
    if "=?" not in text:
        return " ".join(text.split())
    try:
        parts = decode_header(text)
    except Exception:
        return " ".join(text.split())
    out: list[str] = []
    for chunk, cs in parts:
        if isinstance(chunk, bytes):
            out.append(decode_bytes(chunk, cs or "us-ascii"))
        else:
            out.append(chunk)
    return " ".join("".join(out).split())
