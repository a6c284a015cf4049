"""``count`` and ``count_kind`` on every paged list endpoint: the exact total of the filtered rows on
every page, ``count=none`` (not counted), ``count=estimate`` (PostgreSQL's planner rows; exact on
SQLite), and a 422 for any other value. Run on SQLite and on PostgreSQL (DATABASE_URL)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import connection
from django.test import Client

from mailroom.api.counting import count_rows, planner_rows
from mailroom.crm.models import Contact
from tests.factories import (
    CompanyFactory,
    ContactFactory,
    DealFactory,
    MailboxFactory,
    MessageFactory,
    TeamFactory,
    ThreadFactory,
)

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 1, 1, tzinfo=UTC)
ON_POSTGRES = pytest.mark.skipif(connection.vendor != "postgresql", reason="the planner estimate is PostgreSQL's")
ON_SQLITE = pytest.mark.skipif(
    connection.vendor != "sqlite", reason="SQLite has no planner estimate: the fallback to an exact count"
)

# Every paged list endpoint, for the checks that need no rows.
LIST_URLS = [
    "/api/v1/messages", "/api/v1/threads", "/api/v1/contacts", "/api/v1/companies", "/api/v1/deals",
    "/api/v1/outbox", "/api/v1/relay/holds",
]


def _contacts(team: Any) -> tuple[str, int]:
    company = CompanyFactory(team=team)
    for i in range(5):
        ContactFactory(team=team, company=company if i % 2 == 0 else None)
    ContactFactory(team=TeamFactory(), company=None)  # another team's: never counted
    return f"/api/v1/contacts?company_id={company.pk}", 3


def _companies(team: Any) -> tuple[str, int]:
    for i in range(4):
        CompanyFactory(team=team, name=f"Acme {i}")
    CompanyFactory(team=team, name="Globex")
    CompanyFactory(team=TeamFactory(), name="Acme elsewhere")
    return "/api/v1/companies?q=acme", 4


def _deals(team: Any) -> tuple[str, int]:
    for i in range(5):
        DealFactory(team=team, status="won" if i < 3 else "open")
    DealFactory(team=TeamFactory(), status="won")
    return "/api/v1/deals?status=won", 3


def _threads(team: Any) -> tuple[str, int]:
    deal = DealFactory(team=team)
    for i in range(5):
        ThreadFactory(team=team, deal=deal if i < 3 else None, message_count=1, last_message_at=T0 + timedelta(hours=i))
    ThreadFactory(team=team, deal=deal, message_count=0)  # empty threads are not listed
    return f"/api/v1/threads?deal_id={deal.pk}", 3


def _messages(team: Any) -> tuple[str, int]:
    for i in range(4):
        MessageFactory(team=team, state="linked", date=T0 + timedelta(minutes=i))
    MessageFactory(team=team, state="stored")  # not listed until linked
    MessageFactory(team=TeamFactory(), state="linked")
    return f"/api/v1/messages?since={(T0 + timedelta(minutes=1)).isoformat().replace('+00:00', 'Z')}", 3


def _deal_timeline(team: Any) -> tuple[str, int]:
    deal = DealFactory(team=team)
    thread = ThreadFactory(team=team, deal=deal, message_count=3)
    for i in range(3):
        MessageFactory(team=team, thread=thread, state="linked", date=T0 + timedelta(minutes=i))
    MessageFactory(team=team, thread=ThreadFactory(team=team), state="linked")
    return f"/api/v1/deals/{deal.pk}/timeline", 3


def _company_timeline(team: Any) -> tuple[str, int]:
    """Two contacts of one company on one message: the message is listed, and counted, once."""
    from mailroom.conversations.models import MessageContact
    from tests.conversations.mail import ingest, raw_email
    from tests.factories import CompanyDomainFactory, ContactEmailFactory

    company = CompanyFactory(team=team, name="Acme")
    CompanyDomainFactory(company=company, domain="acme.test")
    for name in ("anna", "boris"):
        contact = ContactFactory(team=team, name=name, company=company)
        ContactEmailFactory(contact=contact, address=f"{name}@acme.test", canonical=f"{name}@acme.test")
    box = MailboxFactory(team=team, email="manager0@company.test")
    mails = [("anna", "boris@acme.test"), ("boris", None), ("anna", None)]
    for i, (frm, cc) in enumerate(mails):
        ingest(team, box, raw_email(mid=f"ct{i}@acme.test", frm=f"{frm}@acme.test", cc=cc, subject=f"S{i}",
                                    date=T0 + timedelta(hours=i)))
    assert MessageContact.objects.filter(company=company).count() == 4  # the first message twice
    return f"/api/v1/companies/{company.pk}/timeline", 3


def _outbox(team: Any, user: Any) -> tuple[str, int]:
    from mailroom.outbound.services import ComposeInput, outbox_create

    mailbox = MailboxFactory(team=team)
    for i in range(3):
        outbox_create(user=user, mailbox=mailbox, data=ComposeInput(
            to=("person@client.test",), subject=f"Hi {i}", text="Hello", send_at=datetime(2099, 1, 1, tzinfo=UTC)))
    return f"/api/v1/outbox?mailbox={mailbox.pk}", 3


BUILDERS: dict[str, Callable[..., tuple[str, int]]] = {
    "contacts": _contacts, "companies": _companies, "deals": _deals, "threads": _threads,
    "messages": _messages, "deal-timeline": _deal_timeline, "company-timeline": _company_timeline,
    "outbox": _outbox,
}


def _build(name: str, team: Any, user: Any) -> tuple[str, int]:
    return BUILDERS[name](team, user) if name == "outbox" else BUILDERS[name](team)


def _pages(client: Client, url: str, limit: int, extra: str = "") -> list[dict[str, Any]]:
    """Every page of a list, following next_cursor (or offset, where the list has no cursor)."""
    pages: list[dict[str, Any]] = []
    query = f"limit={limit}{extra}"
    while True:
        resp = client.get(f"{url}{'&' if '?' in url else '?'}{query}")
        assert resp.status_code == 200, resp.content
        page = resp.json()
        pages.append(page)
        if "next_cursor" in page:
            if page["next_cursor"] is None:
                return pages
            query = f"limit={limit}{extra}&cursor={page['next_cursor']}"
        else:
            if len(page["items"]) < limit:
                return pages
            query = f"limit={limit}{extra}&offset={limit * len(pages)}"


@pytest.mark.parametrize("name", list(BUILDERS))
def test_exact_count_is_the_filtered_total_on_every_page(api_client: Client, team: Any, user: Any, name: str) -> None:
    url, total = _build(name, team, user)
    pages = _pages(api_client, url, limit=2)
    assert len(pages) == 2
    assert [(p["count"], p["count_kind"]) for p in pages] == [(total, "exact")] * 2
    assert sum(len(p["items"]) for p in pages) == total
    explicit = _pages(api_client, url, limit=2, extra="&count=exact")
    assert [p["count"] for p in explicit] == [total] * 2


@pytest.mark.parametrize("name", list(BUILDERS))
def test_count_none_lists_the_same_items_uncounted(api_client: Client, team: Any, user: Any, name: str) -> None:
    url, total = _build(name, team, user)
    counted = _pages(api_client, url, limit=2)
    uncounted = _pages(api_client, url, limit=2, extra="&count=none")
    assert [(p["count"], p["count_kind"]) for p in uncounted] == [(None, "none")] * 2
    assert [p["items"] for p in uncounted] == [p["items"] for p in counted]
    assert sum(len(p["items"]) for p in uncounted) == total


@ON_POSTGRES
@pytest.mark.parametrize("name", list(BUILDERS))
def test_count_estimate_on_postgresql_is_the_planner_estimate(
    api_client: Client, team: Any, user: Any, name: str
) -> None:
    url, _ = _build(name, team, user)
    pages = _pages(api_client, url, limit=2, extra="&count=estimate")
    for page in pages:
        assert page["count_kind"] == "estimate"
        assert isinstance(page["count"], int) and page["count"] >= 0


@ON_SQLITE
@pytest.mark.parametrize("name", list(BUILDERS))
def test_count_estimate_on_sqlite_is_exact_and_says_so(api_client: Client, team: Any, user: Any, name: str) -> None:
    url, total = _build(name, team, user)
    pages = _pages(api_client, url, limit=2, extra="&count=estimate")
    assert [(p["count"], p["count_kind"]) for p in pages] == [(total, "exact")] * 2


def test_a_contact_found_by_two_of_its_addresses_is_counted_once(api_client: Client, team: Any) -> None:
    from tests.factories import ContactEmailFactory

    anna = ContactFactory(team=team, name="Anna")
    for address in ("anna@acme.test", "anna.smith@acme.test"):
        ContactEmailFactory(contact=anna, address=address, canonical=address)
    page = api_client.get("/api/v1/contacts", {"q": "anna"}).json()
    assert ([c["id"] for c in page["items"]], page["count"]) == ([anna.pk], 1)


@ON_POSTGRES
def test_estimate_sends_user_text_as_parameters_never_as_sql(api_client: Client, team: Any) -> None:
    """Quotes, percent signs and a statement separator in a search are values: the EXPLAIN runs with
    them as parameters, and the tables are still there."""
    ContactFactory(team=team, name="O'Brien 100%")
    for q in ("O'Brien 100%", "x'); DROP TABLE crm_contact; --", "%s %(name)s"):
        resp = api_client.get("/api/v1/contacts", {"q": q, "count": "estimate"})
        assert resp.status_code == 200, resp.content
        assert resp.json()["count_kind"] == "estimate" and resp.json()["count"] >= 0
    assert Contact.objects.count() == 1


@ON_POSTGRES
def test_planner_rows_of_a_filter_that_matches_nothing_is_zero(team: Any) -> None:
    assert planner_rows(Contact.objects.filter(pk__in=[])) == 0
    assert count_rows(Contact.objects.filter(pk__in=[]), "estimate") == {"count": 0, "count_kind": "estimate"}


@pytest.mark.parametrize("url", LIST_URLS)
@pytest.mark.parametrize("value", ["exactly", "", "NONE", "1"])
def test_another_count_value_is_422_naming_the_parameter(api_client: Client, url: str, value: str) -> None:
    resp = api_client.get(url, {"count": value})
    assert resp.status_code == 422, resp.content
    assert resp["Content-Type"].startswith("application/json")
    assert "count" in resp.json()["detail"]


@pytest.mark.parametrize("url", LIST_URLS)
def test_an_empty_list_counts_zero(api_client: Client, url: str) -> None:
    page = api_client.get(url).json()
    assert (page["items"], page["count"], page["count_kind"]) == ([], 0, "exact")


def test_the_count_fields_are_described_in_openapi(api_client: Client) -> None:
    schema = api_client.get("/api/v1/openapi.json").json()
    for name in ("MessagePage", "ThreadPage", "ContactPage", "CompanyPage", "DealPage", "TimelineOut",
                 "OutboxPage", "HoldPage"):
        props = schema["components"]["schemas"][name]["properties"]
        assert props["count"]["description"].startswith("number of rows matching the filters across all pages")
        assert props["count_kind"]["enum"] == ["exact", "estimate", "none"]
    for path in ("/api/v1/messages", "/api/v1/threads", "/api/v1/outbox", "/api/v1/deals/{deal_id}/timeline"):
        [param] = [p for p in schema["paths"][path]["get"]["parameters"] if p["name"] == "count"]
        assert param["schema"]["enum"] == ["exact", "estimate", "none"] and param["schema"]["default"] == "exact"
        assert param["description"].startswith("how to count the matching rows")

