"""Signed tokens we put into our own Message-IDs and relay addresses.

Everything is lower-case base32 so that a token survives case folding by mail servers, and
HMAC-SHA256 signed with a key derived from ``MAILROOM_TOKEN_KEY`` (or SECRET_KEY), so that a
forged header cannot claim to belong to one of our threads.

* Our Message-IDs: ``<mr.<thread-token>.<random>@<domain>>`` or ``<mr.0.<random>@<domain>>`` when no
  thread exists yet. ``parse_own_message_id`` returns the thread id only when the signature holds.
* Thread tokens: base32(thread id, 8 bytes) + base32(HMAC, 80 bits).
* Relay tokens (``reply+<token>@relay-domain``): 128 random bits + 64-bit HMAC; revocable because the
  random part is stored (see ``outbound``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import struct
from dataclasses import dataclass
from functools import lru_cache

from django.conf import settings

_B32 = re.compile(r"^[a-z2-7]+$")


@lru_cache(maxsize=8)
def _key(purpose: str, secret: str) -> bytes:
    return hashlib.sha256(f"mailroom:{purpose}:".encode() + secret.encode()).digest()


def key_for(purpose: str) -> bytes:
    return _key(purpose, settings.MAILROOM_TOKEN_KEY or settings.SECRET_KEY)


def b32(data: bytes) -> str:
    return base64.b32encode(data).decode().rstrip("=").lower()


def unb32(text: str) -> bytes | None:
    text = text.lower()
    if not _B32.match(text):
        return None
    try:
        return base64.b32decode(text.upper() + "=" * (-len(text) % 8))
    except (ValueError, base64.binascii.Error):  # type: ignore[attr-defined]
        return None


def sign(payload: bytes, purpose: str, length: int = 10) -> bytes:
    return hmac.new(key_for(purpose), payload, hashlib.sha256).digest()[:length]


def verify(payload: bytes, signature: bytes, purpose: str) -> bool:
    return hmac.compare_digest(sign(payload, purpose, len(signature)), signature)


# --- thread tokens ---------------------------------------------------------------------------------
def thread_token(thread_id: int) -> str:
    payload = struct.pack(">Q", thread_id)
    return b32(payload + sign(payload, "thread"))  # 18 bytes -> 29 chars


def parse_thread_token(token: str) -> int | None:
    raw = unb32(token)
    if raw is None or len(raw) != 18:
        return None
    payload, sig = raw[:8], raw[8:]
    if not verify(payload, sig, "thread"):
        return None
    return int(struct.unpack(">Q", payload)[0])


# --- our Message-IDs -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class OwnMessageId:
    thread_id: int | None  # None: ours, sent before any thread existed


def make_message_id(*, thread_id: int | None, domain: str) -> str:
    """A new Message-ID (without angle brackets) on ``domain`` carrying a signed thread token."""
    token = thread_token(thread_id) if thread_id else "0"
    rand = b32(os.urandom(10))
    nonce_sig = b32(sign(f"{token}.{rand}".encode(), "msgid", 5))
    return f"mr.{token}.{rand}{nonce_sig}@{domain}"


def parse_own_message_id(message_id: str) -> OwnMessageId | None:
    """Recognise one of our Message-IDs. Returns None for anything we did not sign."""
    local, _, _domain = message_id.strip("<>").partition("@")
    parts = local.lower().split(".")
    if len(parts) != 3 or parts[0] != "mr":
        return None
    token, tail = parts[1], parts[2]
    if len(tail) != 24:  # 16 chars random + 8 chars signature
        return None
    rand, nonce_sig = tail[:16], tail[16:]
    sig = unb32(nonce_sig)
    if sig is None or not verify(f"{token}.{rand}".encode(), sig, "msgid"):
        return None
    if token == "0":  # noqa: S105 - the no-thread marker
        return OwnMessageId(thread_id=None)
    thread_id = parse_thread_token(token)
    if thread_id is None:
        return None
    return OwnMessageId(thread_id=thread_id)


# --- relay tokens ----------------------------------------------------------------------------------
def make_relay_token() -> tuple[str, str]:
    """Return (token, token_id): the token for the address and the id to store (revocation)."""
    ident = os.urandom(16)
    return b32(ident + sign(ident, "relay", 8)), b32(ident)


def parse_relay_token(token: str) -> str | None:
    """Return the stored token id when the signature holds (the caller still checks revocation)."""
    raw = unb32(token)
    if raw is None or len(raw) != 24:
        return None
    ident, sig = raw[:16], raw[16:]
    if not verify(ident, sig, "relay"):
        return None
    return b32(ident)
