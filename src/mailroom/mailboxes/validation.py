"""Mailbox fields as the protocols take them: host names as IDNA, addresses as addresses, and no CR,
LF, NUL or other control character in anything that reaches an IMAP/SMTP dialogue or a header."""

from __future__ import annotations

import ipaddress
import re

from mailroom.core.errors import InvalidInput
from mailroom.core.text import check_text

_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")


def no_control(value: str, field: str) -> str:
    """``value`` unless it holds a control character (CR, LF, NUL, ...) or a lone surrogate."""
    return check_text(value, field)


def hostname(value: str, field: str) -> str:
    """A host name in its ASCII (IDNA) form, lower-cased, or an IP literal."""
    value = no_control(value, field).strip().rstrip(".")
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    try:
        ascii_name = value.encode("idna").decode("ascii").lower()
    except UnicodeError as exc:
        raise InvalidInput(f"{field}: {value!r} is not a valid host name", field=field) from exc
    labels = ascii_name.split(".")
    if not ascii_name or len(ascii_name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise InvalidInput(f"{field}: {value!r} is not a valid host name (letters, digits, '-' and '.')", field=field)
    return ascii_name


def address(value: str, field: str) -> str:
    """A mail address ``local@domain``, the domain in its IDNA form, lower-cased."""
    value = no_control(value, field).strip()
    local, at, domain = value.rpartition("@")
    if not at or not _LOCAL.fullmatch(local) or len(local) > 64:
        raise InvalidInput(f"{field} must be a mail address like manager@company.com", field=field)
    return f"{local}@{hostname(domain, field)}".lower()
