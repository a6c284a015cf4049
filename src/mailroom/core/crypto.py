"""Secrets at rest: AES-256-GCM with a key id, so keys can rotate.

Ciphertext format: ``mr1:<kid>:<urlsafe-b64(nonce || ciphertext+tag)>``. The first configured key
encrypts; every configured key decrypts. Keys come from ``MAILROOM_ENCRYPTION_KEYS``
(``kid:base64key,...``) or from the key file in the data folder that ``mailroom serve`` creates on a
fresh install. With no key at all, anything that needs a secret refuses with :class:`KeyMissingError`.
"""

from __future__ import annotations

import base64
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.conf import settings

from mailroom.core.keys import write_private_file

PREFIX = "mr1"


class KeyMissingError(RuntimeError):
    """No encryption key is configured."""


class DecryptError(RuntimeError):
    """A secret could not be decrypted (unknown key id or tampered ciphertext)."""


@dataclass(frozen=True)
class Keyring:
    active_kid: str
    keys: dict[str, bytes]


def parse_keys(spec: str) -> Keyring:
    keys: dict[str, bytes] = {}
    order: list[str] = []
    for item in spec.replace("\n", ",").split(","):
        item = item.strip()
        if not item or item.startswith("#"):
            continue
        kid, sep, b64 = item.partition(":")
        if not sep or not kid:
            raise KeyMissingError(f"encryption key entry {kid!r} must look like 'kid:base64key'")
        raw = base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4))
        if len(raw) != 32:
            raise KeyMissingError(f"encryption key {kid!r} must be 32 bytes (base64), got {len(raw)}")
        keys[kid] = raw
        order.append(kid)
    if not order:
        raise KeyMissingError("no encryption key configured")
    return Keyring(active_kid=order[0], keys=keys)


def generate_key_spec(kid: str | None = None) -> str:
    kid = kid or "k" + secrets.token_hex(4)
    return f"{kid}:{base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip('=')}"


def key_file() -> Path:
    return Path(settings.MAILROOM_KEY_FILE)


def ensure_key_file() -> bool:
    """Create the key file on a fresh install. Returns True when a key was created."""
    if settings.MAILROOM_ENCRYPTION_KEYS or key_file().exists():
        return False
    # Mode 0600 from its creation, and under its name only whole: a reader never sees half a key.
    return write_private_file(key_file(), generate_key_spec() + "\n")


_cache: dict[str, Keyring] = {}


def keyring() -> Keyring:
    spec = settings.MAILROOM_ENCRYPTION_KEYS
    if not spec:
        path = key_file()
        if not path.exists():
            raise KeyMissingError(
                "No encryption key: set MAILROOM_ENCRYPTION_KEYS=kid:base64key (generate one with "
                f"'mailroom keys generate') or restore the key file {path}. Mailbox secrets cannot be "
                "read or written without it."
            )
        spec = path.read_text()
    cached = _cache.get(spec)
    if cached is None:
        cached = _cache[spec] = parse_keys(spec)
    return cached


def encrypt(plaintext: str, *, aad: bytes = b"") -> str:
    ring = keyring()
    nonce = os.urandom(12)
    ct = AESGCM(ring.keys[ring.active_kid]).encrypt(nonce, plaintext.encode("utf-8"), aad or None)
    return f"{PREFIX}:{ring.active_kid}:{base64.urlsafe_b64encode(nonce + ct).decode()}"


def decrypt(token: str, *, aad: bytes = b"") -> str:
    if not token:
        return ""
    prefix, _, rest = token.partition(":")
    kid, _, b64 = rest.partition(":")
    if prefix != PREFIX or not kid or not b64:
        raise DecryptError("not a Mailroom ciphertext")
    ring = keyring()
    key = ring.keys.get(kid)
    if key is None:
        raise DecryptError(f"secret was encrypted with key {kid!r}, which is not configured")
    blob = base64.urlsafe_b64decode(b64)
    try:
        return AESGCM(key).decrypt(blob[:12], blob[12:], aad or None).decode("utf-8")
    except Exception as exc:  # InvalidTag
        raise DecryptError("secret failed authentication (wrong key or tampered)") from exc


def needs_rotation(token: str) -> bool:
    return bool(token) and token.split(":", 2)[1] != keyring().active_kid
