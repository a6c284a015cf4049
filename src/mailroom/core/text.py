"""Text a database stores: no NUL (PostgreSQL takes none), no lone surrogate (UTF-8 cannot encode
one, so neither SQLite nor PostgreSQL can take it) and, in a one-line value (a name, an address, a
domain, a subject, a search term), no control character at all. The API's input schemas and the
services (which the CLI calls too) refuse such text with an error naming the field."""

from __future__ import annotations

import re

from mailroom.core.errors import InvalidInput

_SURROGATE = re.compile("[\ud800-\udfff]")
_LINE_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_TEXT_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # tab, LF and CR are text


def text_problem(value: str, *, multiline: bool = False) -> str | None:
    """What makes ``value`` unstorable (or, for a one-line value, unfit), or None."""
    if _SURROGATE.search(value):
        return "a lone surrogate (\\ud800-\\udfff) is not text: send valid UTF-8"
    if "\x00" in value:
        return "NUL characters are not allowed"
    if (_TEXT_CONTROL if multiline else _LINE_CONTROL).search(value):
        if multiline:
            return "control characters other than tab, CR and LF are not allowed"
        return "control characters (CR, LF, tab, ...) are not allowed"
    return None


def check_text(value: str, field: str, *, multiline: bool = False) -> str:
    """``value`` unless it cannot be stored; then a 400 naming ``field``."""
    problem = text_problem(value, multiline=multiline)
    if problem is not None:
        raise InvalidInput(f"{field}: {problem}", field=field)
    return value
