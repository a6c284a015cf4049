"""Range-checked query parameters shared by the list endpoints. A value outside its range is a 422
JSON answer naming the parameter (never a database error: SQLite takes no integer beyond 64 bits,
and a negative slice is a Python error)."""

from __future__ import annotations

from typing import Any

from ninja import Query

MAX_DB_ID = 2**63 - 1  # the largest value of a 64-bit signed primary key (SQLite and PostgreSQL bigint)
MAX_LIMIT = 500
MAX_OFFSET = 1_000_000


def id_query(description: str = "") -> Any:
    """An optional id filter: absent, or 1..2**63-1."""
    return Query(None, ge=1, le=MAX_DB_ID, description=description or None)


def limit_query(default: int = 50, maximum: int = MAX_LIMIT) -> Any:
    return Query(default, ge=1, le=maximum)


def offset_query() -> Any:
    return Query(0, ge=0, le=MAX_OFFSET)
