"""Reads for CRM lists: search by address, name and domain; keyset pagination by id."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db.models import Q, QuerySet

from mailroom.core.errors import InvalidInput
from mailroom.crm.models import Company, Contact, Deal
from mailroom.routing.addresses import canonical_address

MAX_LIMIT = 200


@dataclass(frozen=True, slots=True)
class IdPage:
    items: list[Any]
    next_cursor: int | None
    # The filtered rows the page is cut from, without the cursor: what the list's count counts.
    matching: QuerySet[Any]


def _page(qs: QuerySet[Any], cursor: int | None, limit: int) -> IdPage:
    if limit < 1 or limit > MAX_LIMIT:
        raise InvalidInput(f"limit must be between 1 and {MAX_LIMIT}", field="limit")
    matching = qs
    if cursor is not None:
        qs = qs.filter(pk__lt=cursor)
    rows = list(qs.order_by("-pk")[: limit + 1])
    return IdPage(rows[:limit], rows[limit - 1].pk if len(rows) > limit else None, matching)


def contact_list(
    *,
    contacts: QuerySet[Contact],
    q: str = "",
    address: str = "",
    domain: str = "",
    company_id: int | None = None,
    cursor: int | None = None,
    limit: int = 50,
) -> IdPage:
    qs = contacts
    if address:
        a = address.strip().lower()
        qs = qs.filter(Q(emails__address=a) | Q(emails__canonical=canonical_address(a)))
    if domain:
        d = domain.strip().lower().lstrip("@")
        qs = qs.filter(emails__address__endswith="@" + d)
    if q:
        qs = qs.filter(Q(name__icontains=q) | Q(emails__address__icontains=q.lower()))
    if company_id is not None:
        qs = qs.filter(company_id=company_id)
    return _page(qs.distinct().prefetch_related("emails"), cursor, limit)


def company_list(
    *, companies: QuerySet[Company], q: str = "", domain: str = "", cursor: int | None = None, limit: int = 50
) -> IdPage:
    qs = companies
    if domain:
        d = domain.strip().lower().lstrip("@")
        if "@" in d:
            d = d.rsplit("@", 1)[1]
        qs = qs.filter(domains__domain=d)
    if q:
        qs = qs.filter(Q(name__icontains=q) | Q(domains__domain__icontains=q.lower()))
    return _page(qs.distinct().prefetch_related("domains"), cursor, limit)


def deal_list(
    *,
    deals: QuerySet[Deal],
    q: str = "",
    status: str = "",
    contact_id: int | None = None,
    company_id: int | None = None,
    cursor: int | None = None,
    limit: int = 50,
) -> IdPage:
    qs = deals
    if q:
        qs = qs.filter(title__icontains=q)
    if status:
        qs = qs.filter(status=status)
    if contact_id is not None:
        qs = qs.filter(contact_id=contact_id)
    if company_id is not None:
        qs = qs.filter(company_id=company_id)
    return _page(qs, cursor, limit)
