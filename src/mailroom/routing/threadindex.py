"""Outlook's ``Thread-Index`` header: base64 of a 22-byte conversation header (6 bytes of FILETIME +
16-byte GUID) followed by 5 bytes per reply. The first 22 bytes identify the conversation."""

from __future__ import annotations

import base64
import binascii


def conversation_id(thread_index: str) -> str:
    """Hex of the 22-byte conversation header of a Thread-Index; "" when absent or malformed."""
    value = "".join((thread_index or "").split())
    if not value:
        return ""
    try:
        raw = base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
    except (binascii.Error, ValueError):
        return ""
    if len(raw) < 22 or (len(raw) - 22) % 5:
        return ""
    return raw[:22].hex()


def depth(thread_index: str) -> int:
    """How many replies deep a Thread-Index is (0 for a conversation starter, -1 if malformed)."""
    value = "".join((thread_index or "").split())
    try:
        raw = base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
    except (binascii.Error, ValueError):
        return -1
    if len(raw) < 22 or (len(raw) - 22) % 5:
        return -1
    return (len(raw) - 22) // 5
