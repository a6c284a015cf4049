"""/api/v1/contacts, /companies, /deals, /ignore-list: every endpoint for anonymous, other-team and
permitted users; denials leave nothing behind."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.test import Client

from mailroom.conversations.models import MessageContact
from mailroom.crm.models import Company, CompanyDomain, Contact, ContactEmail, Deal, IgnoreEntry
from tests.conversations.mail import ingest, raw_email, sent
from tests.factories import (
    CompanyDomainFactory,
    CompanyFactory,
    ContactEmailFactory,
    ContactFactory,
    DealFactory,
    IgnoreEntryFactory,
    MailboxFactory,
)

pytestmark = pytest.mark.django_db
T0 = datetime(2025, 5, 1, 8, 0, tzinfo=UTC)


def _json(client: Client, method: str, url: str, body: Any = None) -> Any:
    fn = getattr(client, method)
    if body is None:
        return fn(url)
    return fn(url, data=json.dumps(body), content_type="application/json")


@pytest.fixture
def objs(team: Any) -> dict[str, Any]:
    company = CompanyFactory(team=team, name="Acme")
    CompanyDomainFactory(company=company, domain="acme.test")
    contact = ContactFactory(team=team, name="Anna Smith", company=company)
    ContactEmailFactory(contact=contact, address="anna@acme.test", canonical="anna@acme.test")
    deal = DealFactory(team=team, title="Big deal", contact=contact, company=company)
    entry = IgnoreEntryFactory(team=team, kind="domain", value="vendor.test")
    return {"company": company, "contact": contact, "deal": deal, "entry": entry}


def _endpoints(o: dict[str, Any]) -> list[tuple[str, str, Any]]:
    c, co, d, e = o["contact"].pk, o["company"].pk, o["deal"].pk, o["entry"].pk
    return [
        ("get", f"/api/v1/contacts/{c}", None),
        ("patch", f"/api/v1/contacts/{c}", {"name": "Hacked"}),
        ("delete", f"/api/v1/contacts/{c}", None),
        ("get", f"/api/v1/contacts/{c}/timeline", None),
        ("get", f"/api/v1/companies/{co}", None),
        ("patch", f"/api/v1/companies/{co}", {"name": "Hacked"}),
        ("delete", f"/api/v1/companies/{co}", None),
        ("get", f"/api/v1/companies/{co}/timeline", None),
        ("get", f"/api/v1/deals/{d}", None),
        ("patch", f"/api/v1/deals/{d}", {"title": "Hacked"}),
        ("delete", f"/api/v1/deals/{d}", None),
        ("get", f"/api/v1/deals/{d}/timeline", None),
        ("delete", f"/api/v1/ignore-list/{e}", None),
    ]


def _state() -> tuple[Any, ...]:
    return (
        list(Contact.objects.order_by("id").values_list("id", "name", "company_id")),
        list(Company.objects.order_by("id").values_list("id", "name")),
        list(Deal.objects.order_by("id").values_list("id", "title")),
        list(IgnoreEntry.objects.order_by("id").values_list("id", "value")),
        list(ContactEmail.objects.order_by("id").values_list("id", "address")),
    )


def test_anonymous_gets_401_everywhere_and_nothing_changes(objs: dict[str, Any]) -> None:
    before = _state()
    anon = Client()
    for method, url, body in [
        *_endpoints(objs),
        ("get", "/api/v1/contacts", None),
        ("get", "/api/v1/companies", None),
        ("get", "/api/v1/deals", None),
        ("get", "/api/v1/ignore-list", None),
        ("post", "/api/v1/contacts", {"name": "X"}),
        ("post", "/api/v1/companies", {"name": "X"}),
        ("post", "/api/v1/deals", {"title": "X"}),
        ("post", "/api/v1/ignore-list", {"kind": "domain", "value": "x.test"}),
    ]:
        assert _json(anon, method, url, body).status_code == 401, (method, url)
    assert _state() == before


def test_other_team_gets_404_and_nothing_changes(objs: dict[str, Any], other_team_client: Client) -> None:
    before = _state()
    for method, url, body in _endpoints(objs):
        r = _json(other_team_client, method, url, body)
        assert r.status_code == 404, (method, url)
        assert "not found" in r.json()["detail"]
    for url in ("/api/v1/contacts", "/api/v1/companies", "/api/v1/deals", "/api/v1/ignore-list"):
        body = other_team_client.get(url).json()
        assert (body["items"] if isinstance(body, dict) else body) == []
    # Pointing at another team's objects from one's own team is a 404 too.
    r = _json(other_team_client, "post", "/api/v1/contacts", {"name": "X", "company_id": objs["company"].pk})
    assert r.status_code == 404
    assert _state() == before


def test_contact_crud_and_search(api_client: Client, objs: dict[str, Any], team: Any) -> None:
    r = _json(
        api_client,
        "post",
        "/api/v1/contacts",
        {
            "name": "John",
            "emails": ["John.Smith@Gmail.com", "john@work.test"],
            "company_id": objs["company"].pk,
        },
    )
    assert r.status_code == 201
    john = r.json()
    assert (john["name"], john["emails"], john["company"], john["team"]) == (
        "John",
        ["john.smith@gmail.com", "john@work.test"],
        objs["company"].pk,
        team.pk,
    )
    # Search by address (Gmail canonical form), by name, by domain.
    assert [
        c["id"] for c in api_client.get("/api/v1/contacts?address=johnsmith%2Btag@gmail.com").json()["items"]
    ] == [john["id"]]
    assert [c["id"] for c in api_client.get("/api/v1/contacts?q=anna").json()["items"]] == [
        objs["contact"].pk
    ]
    assert [c["id"] for c in api_client.get("/api/v1/contacts?domain=work.test").json()["items"]] == [
        john["id"]
    ]
    # Duplicate address: 409 with a clear message, nothing created.
    r = _json(api_client, "post", "/api/v1/contacts", {"name": "Dup", "emails": ["anna@acme.test"]})
    assert r.status_code == 409
    assert r.json()["detail"] == f"anna@acme.test already belongs to contact {objs['contact'].pk}"
    assert not Contact.objects.filter(name="Dup").exists()
    r = _json(api_client, "post", "/api/v1/contacts", {"name": "Bad", "emails": ["not-an-address"]})
    assert (r.status_code, r.json()["field"]) == (400, "emails")
    r = _json(
        api_client,
        "patch",
        f"/api/v1/contacts/{john['id']}",
        {"emails": ["john@work.test"], "phone": "+7 900"},
    )
    assert (r.status_code, r.json()["emails"], r.json()["phone"]) == (200, ["john@work.test"], "+7 900")
    assert api_client.delete(f"/api/v1/contacts/{john['id']}").status_code == 204
    assert not Contact.objects.filter(pk=john["id"]).exists()


def test_contact_pagination(api_client: Client, team: Any) -> None:
    ids = [ContactFactory(team=team).pk for _ in range(5)]
    p1 = api_client.get("/api/v1/contacts?limit=2").json()
    p2 = api_client.get(f"/api/v1/contacts?limit=2&cursor={p1['next_cursor']}").json()
    p3 = api_client.get(f"/api/v1/contacts?limit=2&cursor={p2['next_cursor']}").json()
    got = [c["id"] for p in (p1, p2, p3) for c in p["items"]]
    assert got == sorted(ids, reverse=True)
    assert p3["next_cursor"] is None
    assert api_client.get("/api/v1/contacts?limit=0").status_code == 422  # range-checked at the API (as /messages always was)


def test_company_crud_and_domain_search(api_client: Client, objs: dict[str, Any]) -> None:
    r = _json(
        api_client,
        "post",
        "/api/v1/companies",
        {"name": "Globex", "domains": ["Globex.test", "@globex.co.uk"]},
    )
    assert r.status_code == 201
    g = r.json()
    assert g["domains"] == ["globex.co.uk", "globex.test"]
    assert [
        c["id"] for c in api_client.get("/api/v1/companies?domain=someone@globex.test").json()["items"]
    ] == [g["id"]]
    assert [c["id"] for c in api_client.get("/api/v1/companies?q=acm").json()["items"]] == [
        objs["company"].pk
    ]
    r = _json(api_client, "post", "/api/v1/companies", {"name": "Copy", "domains": ["acme.test"]})
    assert r.status_code == 409
    assert not Company.objects.filter(name="Copy").exists()
    r = _json(api_client, "patch", f"/api/v1/companies/{g['id']}", {"domains": ["globex.test"]})
    assert r.json()["domains"] == ["globex.test"]
    assert list(CompanyDomain.objects.filter(company_id=g["id"]).values_list("domain", flat=True)) == [
        "globex.test"
    ]
    assert api_client.delete(f"/api/v1/companies/{g['id']}").status_code == 204


def test_deal_crud(api_client: Client, objs: dict[str, Any]) -> None:
    r = _json(
        api_client,
        "post",
        "/api/v1/deals",
        {"title": "Renewal", "contact_id": objs["contact"].pk, "amount": "1500.50", "stage": "proposal"},
    )
    assert r.status_code == 201
    d = r.json()
    assert (d["title"], d["contact"], d["amount"], d["status"]) == (
        "Renewal",
        objs["contact"].pk,
        "1500.50",
        "open",
    )
    r = _json(api_client, "patch", f"/api/v1/deals/{d['id']}", {"status": "won"})
    assert r.json()["status"] == "won"
    r = _json(api_client, "patch", f"/api/v1/deals/{d['id']}", {"status": "maybe"})
    assert (r.status_code, r.json()["field"]) == (400, "status")
    assert [x["id"] for x in api_client.get("/api/v1/deals?status=won").json()["items"]] == [d["id"]]
    assert api_client.delete(f"/api/v1/deals/{d['id']}").status_code == 204


def test_ignore_list(api_client: Client, objs: dict[str, Any]) -> None:
    r = _json(api_client, "post", "/api/v1/ignore-list", {"kind": "address", "value": "Robot.X+1@gmail.com"})
    assert (r.status_code, r.json()["value"]) == (201, "robotx@gmail.com")
    r = _json(api_client, "post", "/api/v1/ignore-list", {"kind": "domain", "value": "vendor.test"})
    assert r.status_code == 409
    assert [e["value"] for e in api_client.get("/api/v1/ignore-list").json()] == [
        "robotx@gmail.com",
        "vendor.test",
    ]


def test_timelines_merge_mailboxes_in_date_order(api_client: Client, team: Any, objs: dict[str, Any]) -> None:
    box1 = MailboxFactory(team=team, email="manager0@company.test")
    box2 = MailboxFactory(team=team, email="sales@company.test")
    m1 = ingest(team, box1, raw_email(mid="t1@acme.test", frm="anna@acme.test", subject="One", date=T0))[0]
    m2 = ingest(
        team,
        box2,
        sent(
            raw_email(
                mid="t2@company.test",
                frm="sales@company.test",
                to="anna@acme.test",
                subject="Two",
                date=T0 + timedelta(hours=1),
            )
        ),
    )[0]
    m3 = ingest(
        team,
        box1,
        raw_email(
            mid="t3@acme.test",
            frm="anna@acme.test",
            subject="Re: Two",
            date=T0 + timedelta(hours=2),
            irt="t2@company.test",
        ),
    )[0]
    ingest(
        team,
        box2,
        raw_email(
            mid="t3@acme.test",
            frm="anna@acme.test",
            subject="Re: Two",
            date=T0 + timedelta(hours=2),
            irt="t2@company.test",
        ),
    )
    contact = objs["contact"]
    body = api_client.get(f"/api/v1/contacts/{contact.pk}/timeline").json()
    items = body["items"]
    assert [(i["message_id"], i["direction"], i["from_address"], i["mailboxes"]) for i in items] == [
        (m3.pk, "incoming", "anna@acme.test", sorted([box1.pk, box2.pk])),
        (m2.pk, "outgoing", "sales@company.test", [box2.pk]),
        (m1.pk, "incoming", "anna@acme.test", [box1.pk]),
    ]
    assert body["next_cursor"] is None
    assert MessageContact.objects.filter(contact=contact).count() == 3
    page1 = api_client.get(f"/api/v1/contacts/{contact.pk}/timeline?limit=2").json()
    page2 = api_client.get(
        f"/api/v1/contacts/{contact.pk}/timeline?limit=2&cursor={page1['next_cursor']}"
    ).json()
    assert [i["message_id"] for i in page1["items"] + page2["items"]] == [m3.pk, m2.pk, m1.pk]
    company = api_client.get(f"/api/v1/companies/{objs['company'].pk}/timeline").json()["items"]
    assert [i["message_id"] for i in company] == [m3.pk, m2.pk, m1.pk]
    deal = api_client.get(f"/api/v1/deals/{objs['deal'].pk}/timeline").json()["items"]
    assert [i["message_id"] for i in deal] == [m3.pk, m2.pk, m1.pk]
    assert api_client.get(f"/api/v1/contacts/{contact.pk}/timeline?cursor=!!").status_code == 400
