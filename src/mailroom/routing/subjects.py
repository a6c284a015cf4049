"""Subject normalisation: reply/forward prefixes in many languages, list tags, ``(fwd)`` trailers.

``base_subject`` follows RFC 5256 (section 2.1) and extends the ``Re:`` family with the prefixes that
mail clients write in other languages (``AW:``, ``WG:``, ``SV:``, ``Отв:``, ``Пересл:`` ...). The
normalised subject (lower-cased, whitespace collapsed) is what threads are compared on.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

# Reply prefixes (case-insensitive): English, German (AW), Nordic (SV, VS), Dutch (Antw), Polish (Odp),
# Italian (R, Rif), Spanish (RV is forward), Russian (Отв, Ответ), Turkish (YNT), Czech (Odp), ...
REPLY_WORDS = ("re", "aw", "sv", "vs", "antw", "antwort", "odp", "rif", "ynt", "отв", "ответ")
# Forward prefixes: English (Fwd, Fw), German (WG), French (TR), Spanish/Portuguese (RV, ENC), Nordic (VB),
# Polish (PD), Dutch (Doorst), Russian (Пересл, Перес, Пер, Фвд), Italian (I), Turkish (ILT).
FORWARD_WORDS = (
    "fwd",
    "fw",
    "forward",
    "wg",
    "tr",
    "rv",
    "enc",
    "vb",
    "pd",
    "doorst",
    "ilt",
    "пересл",
    "перес",
    "пер",
    "фвд",
    "переслано",
)
_WORDS = "|".join(sorted((re.escape(w) for w in REPLY_WORDS + FORWARD_WORDS), key=len, reverse=True))
# "Re:", "RE[2]:", "Re(3):", "Re^2:", "Re :", "Ad:" is NOT a prefix.
_PREFIX = re.compile(rf"^\s*({_WORDS})\s*(?:\[\d+\]|\(\d+\)|\^\d+)?\s*[:：]\s*", re.IGNORECASE)
_BLOB = re.compile(r"^\s*\[[^\[\]]*\]\s*")
_TRAILER = re.compile(r"\s*\(fwd\)\s*$", re.IGNORECASE)
_FWD_BRACKETS = re.compile(r"^\[fwd:\s*(.*)\]$", re.IGNORECASE | re.DOTALL)
_WS = re.compile(r"\s+")


def _clean(subject: str) -> str:
    subject = unicodedata.normalize("NFC", subject)
    return _WS.sub(" ", subject.replace("\t", " ")).strip()


def _strip_leader(text: str) -> tuple[str, list[str]]:
    """Remove leading blobs and reply/forward prefixes; return (rest, prefix words seen, in order)."""
    words: list[str] = []
    while True:
        before = text
        m = _PREFIX.match(text)
        if m:
            words.append(m.group(1).lower())
            text = text[m.end() :]
            continue
        m = _BLOB.match(text)
        if m and text[m.end() :].strip():  # a blob is removed only if something follows it
            text = text[m.end() :]
        if text == before:
            return text, words


def base_subject(subject: str) -> str:
    """RFC 5256 base subject (case kept): prefixes, [blobs], (fwd) trailers and [fwd: ...] removed."""
    text = _clean(subject)
    while True:
        before = text
        while True:
            stripped = _TRAILER.sub("", text)
            if stripped == text:
                break
            text = stripped
        while True:
            rest, _ = _strip_leader(text)
            if rest == text:
                break
            text = rest
        m = _FWD_BRACKETS.match(text)
        if m:
            text = m.group(1).strip()
        if text == before:
            return text.strip()


@lru_cache(maxsize=1 << 14)  # pure; routing asks several times per message
def normalize_subject(subject: str) -> str:
    """The comparison key of a subject: base subject, case-folded, whitespace collapsed."""
    return _WS.sub(" ", base_subject(subject)).casefold().strip()[:1000]


def subject_prefixes(subject: str) -> list[str]:
    """The reply/forward words in front of a subject, in order (``["fwd", "re"]`` for "Fwd: Re: x")."""
    text = _clean(subject)
    words: list[str] = []
    while True:
        text2, found = _strip_leader(text)
        m = _FWD_BRACKETS.match(text2)
        if m:
            found.append("fwd")
            text2 = m.group(1).strip()
        words.extend(found)
        if text2 == text:
            return words
        text = text2


@lru_cache(maxsize=1 << 14)  # pure; routing asks several times per message
def is_forward(subject: str) -> bool:
    """Whether the subject marks a forward (its first prefix is a forward word)."""
    words = subject_prefixes(subject)
    return bool(words) and words[0] in FORWARD_WORDS


@lru_cache(maxsize=1 << 14)  # pure; routing asks several times per message
def is_reply(subject: str) -> bool:
    words = subject_prefixes(subject)
    return bool(words) and words[0] in REPLY_WORDS
