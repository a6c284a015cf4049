"""Size limits of a compose, in one place the settings can import (pure: no Django, no ORM).

``DATA_UPLOAD_MAX_MEMORY_SIZE`` (the request body Django reads) is ``MAX_COMPOSE_REQUEST_BYTES``: what
the largest compose the service accepts takes as a JSON request, so the attachment limit is the
limit a client meets, not Django's default 2.5 MB cap."""

from __future__ import annotations

MIB = 1024 * 1024

# The decoded bytes of all attachments of one message together.
MAX_TOTAL_ATTACHMENTS = 25 * MIB

# Beside the attachments' base64: text, html, subject, recipients, filenames and the JSON around them
# (also the ~1/64 a client that escapes "/" as "\/" in JSON strings adds to the base64).
COMPOSE_FIELDS_ALLOWANCE = 4 * MIB


def base64_length(n: int) -> int:
    """Characters of the standard (padded, unwrapped) base64 of ``n`` bytes."""
    return 4 * ((n + 2) // 3)


MAX_COMPOSE_REQUEST_BYTES = base64_length(MAX_TOTAL_ATTACHMENTS) + COMPOSE_FIELDS_ALLOWANCE


def mib(n: int) -> str:
    """``n`` bytes for a message: ``25 MB`` or ``37.3 MB`` (binary megabytes, as the limits are)."""
    value = n / MIB
    return f"{value:.0f} MB" if value == int(value) else f"{value:.1f} MB"
