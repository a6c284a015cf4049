"""How many rows a list matches: the ``count`` query parameter and the ``count``/``count_kind`` fields
of every paged list answer, in one place.

An exact ``COUNT(*)`` reads every matching row (or index entry), which on a team with hundreds of
thousands of messages costs more than the page itself; a client that polls does not need it at all
(``count=none``), and a client that shows "about 120,000" can take PostgreSQL's planner estimate
(``count=estimate``), which reads only table statistics. SQLite has no such estimate: there the
answer is exact and says so in ``count_kind``."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from django.core.exceptions import EmptyResultSet
from django.db import connections
from django.db.models import QuerySet
from ninja import Query, Schema
from pydantic import Field

CountMode = Literal["exact", "estimate", "none"]

COUNT_DESCRIPTION = (
    "how to count the matching rows: exact (default; COUNT of every match), estimate (PostgreSQL's "
    "planner estimate, cheap on large lists; exact on SQLite) or none (no count: for clients that poll)"
)


# The ``count`` query parameter of a list endpoint (``count: CountParam = "exact"``): a value outside
# the three is a 422 JSON answer naming it.
CountParam = Annotated[CountMode, Query(description=COUNT_DESCRIPTION)]


class CountedPage(Schema):
    """The counting fields every paged list answer carries (list schemas derive from this)."""

    count: int | None = Field(
        description="number of rows matching the filters across all pages (not only this page); "
        "null with count=none; with count_kind estimate, the planner's estimate"
    )
    count_kind: CountMode = Field(
        description="what count is: exact, estimate (PostgreSQL planner rows) or none (not counted)"
    )


def count_rows(qs: QuerySet[Any], mode: CountMode) -> dict[str, Any]:
    """``{"count": ..., "count_kind": ...}`` for ``qs``, the list's filtered rows before paging.

    ``qs`` must be the query the page is cut from without its cursor or offset, so the count stays
    the total on every page."""
    if mode == "none":
        return {"count": None, "count_kind": "none"}
    if mode == "estimate" and connections[qs.db].vendor == "postgresql":
        return {"count": planner_rows(qs), "count_kind": "estimate"}
    return {"count": qs.count(), "count_kind": "exact"}


def planner_rows(qs: QuerySet[Any]) -> int:
    """PostgreSQL's estimate of the rows ``qs`` returns: "Plan Rows" of the top plan node of
    ``EXPLAIN (FORMAT JSON)``. The statement is the queryset's own compiled SQL with its parameters
    passed separately to the driver (``sql_with_params``, for the queryset's database): no value a
    user sent is ever pasted into SQL text."""
    try:
        sql, params = qs.order_by().query.get_compiler(using=qs.db).as_sql()
    except EmptyResultSet:  # a filter that can match nothing (``pk__in=[]``): Django sends no query either
        return 0
    with connections[qs.db].cursor() as cur:
        cur.execute("EXPLAIN (FORMAT JSON) " + sql, params)
        (plan,) = cur.fetchone()
    if isinstance(plan, str | bytes):  # a driver that does not decode json columns
        plan = json.loads(plan)
    return max(0, round(float(plan[0]["Plan"]["Plan Rows"])))
