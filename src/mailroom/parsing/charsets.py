"""Charset handling: declared label -> alias table -> detection, never an exception.

Order of trust for a byte string with a declared charset:

1. the declared label, normalised through an alias table (misspellings, vendor labels);
2. if the declaration is missing, unknown, or decodes with errors, UTF-8;
3. a cheap Cyrillic scorer (windows-1251 / koi8-r / ibm866 / mac-cyrillic) when the bytes look like
   8-bit Cyrillic (also when declared us-ascii/iso-8859-1/windows-1252, a frequent lie);
4. charset-normalizer for everything else; finally UTF-8 with replacement characters.

Detection only runs when the cheap paths fail, so the common case costs one ``bytes.decode``.
"""

from __future__ import annotations

import binascii
import codecs
import re
from functools import lru_cache

ALIASES = {
    "cp1251": "windows-1251",
    "win-1251": "windows-1251",
    "windows1251": "windows-1251",
    "win1251": "windows-1251",
    "cp-1251": "windows-1251",
    "x-cp1251": "windows-1251",
    "windows-1251": "windows-1251",
    "windows-cp1251": "windows-1251",
    "ms-cyrl": "windows-1251",
    "koi8r": "koi8-r",
    "koi8-r": "koi8-r",
    "koi8": "koi8-r",
    "koi": "koi8-r",
    "csKOI8R".lower(): "koi8-r",
    "koi8u": "koi8-u",
    "koi8-ru": "koi8-u",
    "x-mac-cyrillic": "mac-cyrillic",
    "x-mac-ukrainian": "mac-cyrillic",
    "maccyrillic": "mac-cyrillic",
    "cp866": "cp866",
    "ibm866": "cp866",
    "866": "cp866",
    "alt": "cp866",
    "utf8": "utf-8",
    "utf-8": "utf-8",
    "unicode-1-1-utf-8": "utf-8",
    "unicode-2-0-utf-8": "utf-8",
    "x-unicode20utf8": "utf-8",
    "utf-8-sig": "utf-8-sig",
    "us-ascii": "us-ascii",
    "ascii": "us-ascii",
    "ansi_x3.4-1968": "us-ascii",
    "iso-646-us": "us-ascii",
    "latin1": "iso-8859-1",
    "latin-1": "iso-8859-1",
    "iso8859-1": "iso-8859-1",
    "iso-8859-1": "iso-8859-1",
    "iso_8859-1": "iso-8859-1",
    "iso-8859-8-i": "iso-8859-8",
    "iso-8859-6-i": "iso-8859-6",
    "cp1252": "windows-1252",
    "win-1252": "windows-1252",
    "ks_c_5601-1987": "cp949",
    "ks_c_5601": "cp949",
    "euc-kr": "cp949",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "x-gbk": "gb18030",
    "cn-gb": "gb18030",
    "big5": "big5hkscs",
    "x-sjis": "shift_jis",
    "shift-jis": "shift_jis",
    "sjis": "cp932",
    "windows-31j": "cp932",
    "windows-874": "cp874",
    "tis-620": "cp874",
    "iso-2022-jp": "iso2022_jp_ext",
}

# Labels that say nothing useful: go straight to detection.
_UNKNOWN = frozenset(
    {"unknown-8bit", "x-unknown", "unknown", "x-user-defined", "default", "8bit", "binary", "charset"}
)
# Declarations that are frequently wrong for 8-bit Cyrillic text.
_WEAK = frozenset({"us-ascii", "iso-8859-1", "windows-1252"})
# Codecs Python knows but that are not text charsets (bytes->bytes transforms, Python-internal).
_NOT_TEXT_CODECS = frozenset({"base64", "quopri", "hex", "zlib", "bz2", "uu", "rot-13", "idna", "punycode",
                              "raw-unicode-escape", "unicode-escape", "undefined", "mbcs", "oem"})  # fmt: skip
_CYRILLIC = ("windows-1251", "koi8-r", "koi8-u", "cp866", "mac-cyrillic", "iso-8859-5")


def normalize_charset(label: str | None) -> str:
    """Lower-cased, alias-resolved charset label (may still be unknown to Python)."""
    if not label:
        return "utf-8"
    label = label.strip().strip("\"';").strip().lower()
    if label in ALIASES:
        return ALIASES[label]
    compact = re.sub(r"[^a-z0-9]", "", label)
    for key, value in ALIASES.items():
        if re.sub(r"[^a-z0-9]", "", key) == compact:
            return value
    if compact.startswith("windows") and compact[7:].isdigit():
        return f"windows-{compact[7:]}"
    if (
        compact.startswith("cp")
        and compact[2:].isdigit()
        and compact[2:] in {"1250", "1251", "1252", "1253", "1254", "1255", "1256", "1257", "1258"}
    ):
        return f"windows-{compact[2:]}"
    if compact.startswith("iso8859") and compact[7:].isdigit():
        return f"iso-8859-{compact[7:]}"
    return label


@lru_cache(maxsize=256)
def codec_for(label: str | None) -> str | None:
    """A Python codec name for a declared label, or None if unknown/meaningless."""
    name = normalize_charset(label)
    if name in _UNKNOWN or not name.isascii() or len(name) > 40:
        return None
    try:
        info = codecs.lookup(name)
    except (LookupError, ValueError, UnicodeError):
        return None
    if info.name in _NOT_TEXT_CODECS:
        return None
    return name


def _is_ascii(data: bytes) -> bool:
    return data.isascii()


# Frequency of the most common Russian/Ukrainian lower-case letters in running text.
_COMMON_LOWER = set("оеаинтсрвлкмдпуяыьгзбчйхжшюцщэфъёії")
_UPPER = set("АБВГДЕЁЖЗИЙКЛМНОПРСТУФХЦЧШЩЪЫЬЭЮЯІЇЄ")


def _cyrillic_score(text: str) -> float:
    lower = upper = other = 0
    for ch in text:
        if ch < "\x80":
            continue
        if ch in _COMMON_LOWER:
            lower += 1
        elif ch in _UPPER:
            upper += 1
        else:
            other += 1
    total = lower + upper + other
    if not total:
        return 0.0
    return (lower + 0.3 * upper - 2.0 * other) / total


def _looks_8bit_cyrillic(data: bytes) -> bool:
    sample = data[:4096]
    high = sum(1 for b in sample if b >= 0x80)
    if high < 2:
        return False
    letters = sum(1 for b in sample if (65 <= b <= 90) or (97 <= b <= 122))
    # Cyrillic text: most letters are high bytes; Western European: a few accents among ASCII letters.
    return high >= 0.3 * (letters + high)


def guess_cyrillic(data: bytes) -> tuple[str, str] | None:
    """Best Cyrillic single-byte decoding of ``data`` as (codec, text), or None if none fits."""
    best: tuple[float, str, str] | None = None
    sample = data[:8192]
    for cs in _CYRILLIC:
        try:
            text = sample.decode(cs)
        except UnicodeDecodeError:
            continue
        score = _cyrillic_score(text)
        if best is None or score > best[0]:
            best = (score, cs, text)
    if best is None or best[0] < 0.5:
        return None
    cs = best[1]
    return cs, data.decode(cs, "replace")


def detect(data: bytes) -> tuple[str, str]:
    """Decode bytes of unknown charset: UTF-8, Cyrillic scorer, charset-normalizer, UTF-8 replace."""
    if _is_ascii(data):
        return "us-ascii", data.decode("ascii")
    try:
        return "utf-8", data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    if _looks_8bit_cyrillic(data):
        cyr = guess_cyrillic(data)
        if cyr is not None:
            return cyr
    try:
        from charset_normalizer import from_bytes

        best = from_bytes(data[:65536]).best()
        if best is not None and best.encoding:
            enc = best.encoding
            if enc in {"cp1251", "koi8_r", "mac_cyrillic", "cp866", "iso8859_5", "koi8_u"}:
                cyr = guess_cyrillic(data)
                if cyr is not None:
                    return cyr
            return enc, data.decode(enc, "replace")
    except Exception:  # noqa: S110 - detection is best effort
        pass
    return "utf-8", data.decode("utf-8", "replace")


def decode_bytes_ex(data: bytes, charset: str | None) -> tuple[str, str, bool]:
    """Decode ``data`` declared as ``charset``: (text, codec used, declaration_was_trusted)."""
    name = codec_for(charset) if charset else None
    if name is not None:
        if name == "us-ascii" or name in _WEAK:
            if _is_ascii(data):
                return data.decode("ascii"), name, True
            # Declared ASCII/Latin-1 but 8-bit: UTF-8 or Cyrillic are the usual truths.
            try:
                return data.decode("utf-8"), "utf-8", False
            except UnicodeDecodeError:
                pass
            if _looks_8bit_cyrillic(data):
                cyr = guess_cyrillic(data)
                if cyr is not None:
                    return cyr[1], cyr[0], False
            if name == "us-ascii":
                return data.decode("windows-1252", "replace"), "windows-1252", False
            return data.decode(name, "replace"), name, True
        try:
            return data.decode(name), name, True
        except UnicodeDecodeError:
            pass
        except LookupError:  # pragma: no cover - codec_for checked it
            name = None
        if name in _CYRILLIC:
            # A Cyrillic single-byte codec that failed (only cp866/koi8 have gaps): could be UTF-8.
            try:
                return data.decode("utf-8"), "utf-8", False
            except UnicodeDecodeError:
                return data.decode(name, "replace"), name, True
        if name is not None and name.startswith("utf-8"):
            cs, text = detect(data)
            if cs != "utf-8":
                return text, cs, False
            return data.decode("utf-8", "replace"), "utf-8", True
        if name is not None:
            try:
                return data.decode("utf-8"), "utf-8", False
            except UnicodeDecodeError:
                return data.decode(name, "replace"), name, True
    cs, text = detect(data)
    return text, cs, False


def decode_bytes(data: bytes, charset: str | None) -> str:
    """Decode bytes with the declared charset when it fits, else detect. Never raises."""
    return decode_bytes_ex(data, charset)[0]


_ENCODED_WORD = re.compile(r"=\?([^?\s]+?)\?([bBqQ])\?([^?]*)\?=")
_BETWEEN_WORDS = re.compile(r"\s*")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _decode_ew_payload(enc: str, payload: str) -> bytes:
    if enc in "bB":
        p = re.sub(r"[^A-Za-z0-9+/]", "", payload)
        p += "=" * (-len(p) % 4)
        try:
            return binascii.a2b_base64(p)
        except (binascii.Error, ValueError):
            try:
                return binascii.a2b_base64(p[: len(p) - len(p) % 4])
            except (binascii.Error, ValueError):
                return payload.encode("ascii", "replace")
    # Q encoding: "_" is a space.
    raw = payload.replace("_", " ").encode("ascii", "surrogateescape")
    try:
        return binascii.a2b_qp(raw)
    except (binascii.Error, ValueError):
        return raw


def _decode_raw_text(text: str, fallback: str | None = None) -> str:
    """A header fragment that may carry raw 8-bit bytes as surrogate escapes (compat32 parsing).

    ``fallback``: the charset the rest of the message uses (its other encoded words, its body), the
    best guess for raw 8-bit header bytes (what Thunderbird does) when they are not UTF-8 or Cyrillic.
    """
    if text.isascii():
        return text
    try:
        data = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text
    if data.isascii():  # pragma: no cover
        return text
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    name = codec_for(fallback) if fallback else None
    if name is not None and name != "us-ascii" and not name.startswith("utf"):
        if _looks_8bit_cyrillic(data) and name not in _CYRILLIC:
            cyr = guess_cyrillic(data)
            if cyr is not None:
                return cyr[1]
        try:
            return data.decode(name)
        except (UnicodeDecodeError, LookupError):
            pass
    return detect(data)[1]


def decode_header_value(value: object, fallback: str | None = None) -> str:
    """Decode every RFC 2047 chunk of a header value, whatever the charsets; raw 8-bit text too.

    Adjacent encoded words in the same charset are joined as bytes before decoding, so a multibyte
    character split across two words (a common Outlook/mail.ru habit) decodes correctly. Control
    characters become spaces and runs of whitespace collapse.
    """
    text = value if isinstance(value, str) else str(value)
    if "=?" not in text:
        out_text = _decode_raw_text(text, fallback)
        return " ".join(_CONTROL.sub(" ", out_text).split())
    pieces: list[str] = []
    pos = 0
    pending: list[bytes] = []
    pending_cs: str | None = None

    def flush() -> None:
        nonlocal pending, pending_cs
        if pending:
            pieces.append(decode_bytes(b"".join(pending), pending_cs or "us-ascii"))
            pending = []
            pending_cs = None

    for m in _ENCODED_WORD.finditer(text):
        gap = text[pos : m.start()]
        if gap and (gap.strip() or not pending):
            flush()
            pieces.append(_decode_raw_text(gap, fallback))
        charset = m.group(1).split("*", 1)[0]  # RFC 2231 language suffix
        data = _decode_ew_payload(m.group(2), m.group(3))
        if pending and normalize_charset(charset) != normalize_charset(pending_cs):
            flush()
        pending.append(data)
        pending_cs = charset
        pos = m.end()
    flush()
    pieces.append(_decode_raw_text(text[pos:], fallback))
    return " ".join(_CONTROL.sub(" ", "".join(pieces)).split())
