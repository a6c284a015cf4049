"""/api/v1/contacts, /companies, /deals, /ignore: CRUD, search, and the timelines of a contact,
company or deal (every message of the team's mailboxes, each once, newest first)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from django.contrib.auth import get_user_model
from django.http import HttpRequest
from ninja import Router, Schema
from pydantic import Field

from mailroom.accounts.access import access_team_for_user, default_team_for_user, scope_to_user
from mailroom.api.counting import CountedPage, CountMode, CountParam, count_rows
from mailroom.api.inputs import InputSchema, QueryText
from mailroom.api.params import id_query, limit_query
from mailroom.conversations.selectors import MAX_LIMIT as TIMELINE_MAX_LIMIT
from mailroom.conversations.selectors import Page, company_timeline, contact_timeline, deal_timeline
from mailroom.core.errors import InvalidInput
from mailroom.crm import selectors, services
from mailroom.crm.access import (
    access_company_for_user,
    access_contact_for_user,
    access_deal_for_user,
    access_ignore_entry_for_user,
    companies_for_user,
    contacts_for_user,
    deals_for_user,
)
from mailroom.crm.models import AMOUNT_DECIMAL_PLACES, AMOUNT_MAX_DIGITS, Company, Contact, Deal, IgnoreEntry
from mailroom.crm.selectors import MAX_LIMIT as CRM_MAX_LIMIT
from mailroom.crm.selectors import IdPage

contacts_router = Router(tags=["contacts"])
companies_router = Router(tags=["companies"])
deals_router = Router(tags=["deals"])
ignore_router = Router(tags=["ignore list"])


# A deal amount as the column holds it: finite, max_digits/decimal_places of Deal.amount (1e400, NaN,
# Infinity or a 40-digit number are a 422 naming "amount", never a row no read can decode).
Amount = Annotated[
    Decimal,
    Field(max_digits=AMOUNT_MAX_DIGITS, decimal_places=AMOUNT_DECIMAL_PLACES, allow_inf_nan=False),
]


# --- schemas -------------------------------------------------------------------------------------------
class ContactOut(Schema):
    id: int
    team: int
    name: str
    emails: list[str]
    phone: str
    company: int | None
    owner: int | None
    created_automatically: bool
    created_at: datetime


class ContactIn(InputSchema):
    team_id: int | None = None
    name: str = Field("", max_length=300)
    emails: list[str] = []
    phone: str = Field("", max_length=50)
    company_id: int | None = None
    owner_id: int | None = None


class ContactPatch(InputSchema):
    name: str | None = Field(None, max_length=300)
    emails: list[str] | None = None
    phone: str | None = Field(None, max_length=50)
    company_id: int | None = None
    owner_id: int | None = None


class CompanyOut(Schema):
    id: int
    team: int
    name: str
    domains: list[str]
    created_at: datetime


class CompanyIn(InputSchema):
    team_id: int | None = None
    name: str = Field(..., max_length=300)
    domains: list[str] = []


class CompanyPatch(InputSchema):
    name: str | None = Field(None, max_length=300)
    domains: list[str] | None = None


class DealOut(Schema):
    id: int
    team: int
    title: str
    contact: int | None
    company: int | None
    amount: Decimal | None
    stage: str
    status: str
    owner: int | None
    created_at: datetime


class DealIn(InputSchema):
    team_id: int | None = None
    title: str = Field(..., max_length=300)
    contact_id: int | None = None
    company_id: int | None = None
    amount: Amount | None = None
    stage: str = Field("", max_length=100)
    status: str = "open"
    owner_id: int | None = None


class DealPatch(InputSchema):
    title: str | None = Field(None, max_length=300)
    contact_id: int | None = None
    company_id: int | None = None
    amount: Amount | None = None
    stage: str | None = Field(None, max_length=100)
    status: str | None = None
    owner_id: int | None = None


class IgnoreOut(Schema):
    id: int
    team: int
    kind: str
    value: str
    note: str


class IgnoreIn(InputSchema):
    multiline_fields = frozenset({"note"})

    team_id: int | None = None
    kind: str
    value: str = Field(..., max_length=320)
    note: str = Field("", max_length=300)


class ContactPage(CountedPage):
    items: list[ContactOut]
    next_cursor: int | None


class CompanyPage(CountedPage):
    items: list[CompanyOut]
    next_cursor: int | None


class DealPage(CountedPage):
    items: list[DealOut]
    next_cursor: int | None


class TimelineItemOut(Schema):
    message_id: int
    thread_id: int | None
    date: datetime | None
    direction: str
    subject: str
    from_address: str
    from_name: str
    mailboxes: list[int]
    snippet: str


class TimelineOut(CountedPage):
    items: list[TimelineItemOut]
    next_cursor: str | None


# --- helpers -------------------------------------------------------------------------------------------
def _team_id(request: HttpRequest, team_id: int | None) -> int:
    if team_id is not None:
        return access_team_for_user(request.user, team_id).pk
    return default_team_for_user(request.user).pk


def _owner(request: HttpRequest, team_id: int, owner_id: int | None) -> Any:
    if owner_id is None:
        return None
    user = get_user_model().objects.filter(pk=owner_id, memberships__team_id=team_id).first()
    if user is None:
        raise InvalidInput(f"user {owner_id} is not a member of the team", field="owner_id")
    return user


def _company(request: HttpRequest, company_id: int | None) -> Company | None:
    return access_company_for_user(request.user, company_id) if company_id is not None else None


def _contact(request: HttpRequest, contact_id: int | None) -> Contact | None:
    return access_contact_for_user(request.user, contact_id) if contact_id is not None else None


def contact_out(c: Contact) -> dict[str, Any]:
    return {
        "id": c.pk,
        "team": c.team_id,
        "name": c.name,
        "emails": sorted(e.address for e in c.emails.all()),
        "phone": c.phone,
        "company": c.company_id,
        "owner": c.owner_id,
        "created_automatically": c.created_automatically,
        "created_at": c.created_at,
    }


def company_out(c: Company) -> dict[str, Any]:
    return {
        "id": c.pk,
        "team": c.team_id,
        "name": c.name,
        "domains": sorted(d.domain for d in c.domains.all()),
        "created_at": c.created_at,
    }


def deal_out(d: Deal) -> dict[str, Any]:
    return {
        "id": d.pk,
        "team": d.team_id,
        "title": d.title,
        "contact": d.contact_id,
        "company": d.company_id,
        "amount": d.amount,
        "stage": d.stage,
        "status": d.status,
        "owner": d.owner_id,
        "created_at": d.created_at,
    }


def timeline_out(page: Page, count: CountMode) -> dict[str, Any]:
    return {
        "items": [
            {**{k: getattr(i, k) for k in TimelineItemOut.model_fields}, "mailboxes": list(i.mailboxes)}
            for i in page.items
        ],
        "next_cursor": page.next_cursor,
        **count_rows(page.matching, count),
    }


def id_page_out(page: IdPage, out: Callable[[Any], dict[str, Any]], count: CountMode) -> dict[str, Any]:
    return {"items": [out(row) for row in page.items], "next_cursor": page.next_cursor,
            **count_rows(page.matching, count)}


# --- contacts ------------------------------------------------------------------------------------------
@contacts_router.get("", response=ContactPage)
def list_contacts(
    request: HttpRequest,
    q: QueryText = "",
    address: QueryText = "",
    domain: QueryText = "",
    company_id: int | None = id_query(),
    cursor: int | None = id_query("next_cursor of the previous page"),
    limit: int = limit_query(50, CRM_MAX_LIMIT),
    count: CountParam = "exact",
) -> dict[str, Any]:
    page = selectors.contact_list(
        contacts=contacts_for_user(request.user),
        q=q,
        address=address,
        domain=domain,
        company_id=company_id,
        cursor=cursor,
        limit=limit,
    )
    return id_page_out(page, contact_out, count)


@contacts_router.post("", response={201: ContactOut})
def create_contact(request: HttpRequest, payload: ContactIn) -> tuple[int, dict[str, Any]]:
    team_id = _team_id(request, payload.team_id)
    contact = services.contact_create(
        team_id=team_id,
        name=payload.name,
        emails=payload.emails,
        phone=payload.phone,
        company=_company(request, payload.company_id),
        owner=_owner(request, team_id, payload.owner_id),
    )
    return 201, contact_out(contact)


@contacts_router.get("/{contact_id}", response=ContactOut)
def get_contact(request: HttpRequest, contact_id: int) -> dict[str, Any]:
    return contact_out(access_contact_for_user(request.user, contact_id))


@contacts_router.patch("/{contact_id}", response=ContactOut)
def update_contact(request: HttpRequest, contact_id: int, payload: ContactPatch) -> dict[str, Any]:
    contact = access_contact_for_user(request.user, contact_id)
    sent = payload.model_fields_set
    kwargs: dict[str, Any] = {"name": payload.name, "emails": payload.emails, "phone": payload.phone}
    if "company_id" in sent:
        kwargs["company"] = _company(request, payload.company_id)
    if "owner_id" in sent:
        kwargs["owner"] = _owner(request, contact.team_id, payload.owner_id)
    return contact_out(services.contact_update(contact=contact, **kwargs))


@contacts_router.delete("/{contact_id}", response={204: None})
def delete_contact(request: HttpRequest, contact_id: int) -> tuple[int, None]:
    services.contact_delete(contact=access_contact_for_user(request.user, contact_id))
    return 204, None


@contacts_router.get("/{contact_id}/timeline", response=TimelineOut)
def contact_timeline_view(
    request: HttpRequest, contact_id: int, cursor: QueryText | None = None,
    limit: int = limit_query(50, TIMELINE_MAX_LIMIT), count: CountParam = "exact",
) -> dict[str, Any]:
    contact = access_contact_for_user(request.user, contact_id)
    return timeline_out(contact_timeline(contact_id=contact.pk, cursor=cursor, limit=limit), count)


# --- companies -----------------------------------------------------------------------------------------
@companies_router.get("", response=CompanyPage)
def list_companies(
    request: HttpRequest, q: QueryText = "", domain: QueryText = "", cursor: int | None = id_query("next_cursor of the previous page"), limit: int = limit_query(50, CRM_MAX_LIMIT),
    count: CountParam = "exact",
) -> dict[str, Any]:
    page = selectors.company_list(
        companies=companies_for_user(request.user), q=q, domain=domain, cursor=cursor, limit=limit
    )
    return id_page_out(page, company_out, count)


@companies_router.post("", response={201: CompanyOut})
def create_company(request: HttpRequest, payload: CompanyIn) -> tuple[int, dict[str, Any]]:
    company = services.company_create(
        team_id=_team_id(request, payload.team_id), name=payload.name, domains=payload.domains
    )
    return 201, company_out(company)


@companies_router.get("/{company_id}", response=CompanyOut)
def get_company(request: HttpRequest, company_id: int) -> dict[str, Any]:
    return company_out(access_company_for_user(request.user, company_id))


@companies_router.patch("/{company_id}", response=CompanyOut)
def update_company(request: HttpRequest, company_id: int, payload: CompanyPatch) -> dict[str, Any]:
    company = access_company_for_user(request.user, company_id)
    return company_out(services.company_update(company=company, name=payload.name, domains=payload.domains))


@companies_router.delete("/{company_id}", response={204: None})
def delete_company(request: HttpRequest, company_id: int) -> tuple[int, None]:
    services.company_delete(company=access_company_for_user(request.user, company_id))
    return 204, None


@companies_router.get("/{company_id}/timeline", response=TimelineOut)
def company_timeline_view(
    request: HttpRequest, company_id: int, cursor: QueryText | None = None,
    limit: int = limit_query(50, TIMELINE_MAX_LIMIT), count: CountParam = "exact",
) -> dict[str, Any]:
    company = access_company_for_user(request.user, company_id)
    return timeline_out(company_timeline(company_id=company.pk, cursor=cursor, limit=limit), count)


# --- deals ---------------------------------------------------------------------------------------------
@deals_router.get("", response=DealPage)
def list_deals(
    request: HttpRequest,
    q: QueryText = "",
    status: QueryText = "",
    contact_id: int | None = id_query(),
    company_id: int | None = id_query(),
    cursor: int | None = id_query("next_cursor of the previous page"),
    limit: int = limit_query(50, CRM_MAX_LIMIT),
    count: CountParam = "exact",
) -> dict[str, Any]:
    page = selectors.deal_list(
        deals=deals_for_user(request.user),
        q=q,
        status=status,
        contact_id=contact_id,
        company_id=company_id,
        cursor=cursor,
        limit=limit,
    )
    return id_page_out(page, deal_out, count)


@deals_router.post("", response={201: DealOut})
def create_deal(request: HttpRequest, payload: DealIn) -> tuple[int, dict[str, Any]]:
    team_id = _team_id(request, payload.team_id)
    deal = services.deal_create(
        team_id=team_id,
        title=payload.title,
        contact=_contact(request, payload.contact_id),
        company=_company(request, payload.company_id),
        amount=payload.amount,
        stage=payload.stage,
        status=payload.status,
        owner=_owner(request, team_id, payload.owner_id),
    )
    return 201, deal_out(deal)


@deals_router.get("/{deal_id}", response=DealOut)
def get_deal(request: HttpRequest, deal_id: int) -> dict[str, Any]:
    return deal_out(access_deal_for_user(request.user, deal_id))


@deals_router.patch("/{deal_id}", response=DealOut)
def update_deal(request: HttpRequest, deal_id: int, payload: DealPatch) -> dict[str, Any]:
    deal = access_deal_for_user(request.user, deal_id)
    sent = payload.model_fields_set
    kwargs: dict[str, Any] = {"title": payload.title, "stage": payload.stage, "status": payload.status}
    if "contact_id" in sent:
        kwargs["contact"] = _contact(request, payload.contact_id)
    if "company_id" in sent:
        kwargs["company"] = _company(request, payload.company_id)
    if "amount" in sent:
        kwargs["amount"] = payload.amount
    if "owner_id" in sent:
        kwargs["owner"] = _owner(request, deal.team_id, payload.owner_id)
    return deal_out(services.deal_update(deal=deal, **kwargs))


@deals_router.delete("/{deal_id}", response={204: None})
def delete_deal(request: HttpRequest, deal_id: int) -> tuple[int, None]:
    services.deal_delete(deal=access_deal_for_user(request.user, deal_id))
    return 204, None


@deals_router.get("/{deal_id}/timeline", response=TimelineOut)
def deal_timeline_view(
    request: HttpRequest, deal_id: int, cursor: QueryText | None = None,
    limit: int = limit_query(50, TIMELINE_MAX_LIMIT), count: CountParam = "exact",
) -> dict[str, Any]:
    deal = access_deal_for_user(request.user, deal_id)
    return timeline_out(deal_timeline(deal_id=deal.pk, cursor=cursor, limit=limit), count)


# --- ignore list ---------------------------------------------------------------------------------------
@ignore_router.get("", response=list[IgnoreOut])
def list_ignore(request: HttpRequest) -> list[dict[str, Any]]:
    rows = scope_to_user(IgnoreEntry.objects.all(), request.user).order_by("kind", "value")[:1000]
    return [{"id": e.pk, "team": e.team_id, "kind": e.kind, "value": e.value, "note": e.note} for e in rows]


@ignore_router.post("", response={201: IgnoreOut})
def create_ignore(request: HttpRequest, payload: IgnoreIn) -> tuple[int, dict[str, Any]]:
    e = services.ignore_entry_create(
        team_id=_team_id(request, payload.team_id), kind=payload.kind, value=payload.value, note=payload.note
    )
    return 201, {"id": e.pk, "team": e.team_id, "kind": e.kind, "value": e.value, "note": e.note}


@ignore_router.delete("/{entry_id}", response={204: None})
def delete_ignore(request: HttpRequest, entry_id: int) -> tuple[int, None]:
    services.ignore_entry_delete(entry=access_ignore_entry_for_user(request.user, entry_id))
    return 204, None


ROUTERS = [
    ("/contacts", contacts_router),
    ("/companies", companies_router),
    ("/deals", deals_router),
    ("/ignore-list", ignore_router),
]
# api.main evaluates ``module.router`` even when ROUTERS is present (getattr default): keep it defined.
router = contacts_router
