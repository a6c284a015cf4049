"""Odd input is a 4xx JSON answer, never a 500: deal amounts the column cannot hold (1e400, 40 digits,
NaN, Infinity, too many places) are refused at the API and in the service, leaving nothing stored and
the deal list readable; every list endpoint range-checks its limit, offset, cursor and id filters."""

from __future__ import annotations

import base64
import json
from decimal import Decimal
from typing import Any

import pytest
from django.test import Client

from mailroom.core.errors import InvalidInput
from mailroom.crm import services
from mailroom.crm.models import Deal
from tests.factories import DealFactory

pytestmark = pytest.mark.django_db

BAD_AMOUNTS = [
    pytest.param("1e400", id="1e400-string"),
    pytest.param("1" * 40, id="40-digits-string"),
    pytest.param("NaN", id="nan"),
    pytest.param("Infinity", id="infinity"),
    pytest.param("-Infinity", id="minus-infinity"),
    pytest.param("1.234", id="three-places"),
    pytest.param("1234567890123.45", id="15-digits"),
    pytest.param("1234567890123", id="13-whole-digits"),
]
RAW_BAD_AMOUNTS = [  # JSON numbers, not strings
    pytest.param("1e400", id="1e400-number"),
    pytest.param("1" * 40, id="40-digits-number"),
]


def _send(client: Client, method: str, url: str, raw_body: str) -> Any:
    return getattr(client, method)(url, data=raw_body, content_type="application/json")


def _assert_amount_refused(resp: Any) -> None:
    assert resp.status_code == 422, resp.content
    assert resp["Content-Type"].startswith("application/json")
    assert "amount" in resp.json()["detail"]


@pytest.mark.parametrize("amount", BAD_AMOUNTS)
def test_post_deal_bad_amount_is_422_and_nothing_stored(api_client: Client, amount: str) -> None:
    resp = _send(api_client, "post", "/api/v1/deals", json.dumps({"title": "D", "amount": amount}))
    _assert_amount_refused(resp)
    assert not Deal.objects.exists()
    assert api_client.get("/api/v1/deals").status_code == 200


@pytest.mark.parametrize("number", RAW_BAD_AMOUNTS)
def test_post_deal_bad_amount_as_json_number(api_client: Client, number: str) -> None:
    resp = _send(api_client, "post", "/api/v1/deals", '{"title": "D", "amount": ' + number + "}")
    _assert_amount_refused(resp)
    assert not Deal.objects.exists()


@pytest.mark.parametrize("amount", BAD_AMOUNTS + RAW_BAD_AMOUNTS)
def test_patch_deal_bad_amount_is_422_and_amount_unchanged(api_client: Client, team: Any, amount: str) -> None:
    deal = DealFactory(team=team, title="D", amount=Decimal("10.00"))
    body = '{"amount": %s}' % (json.dumps(amount) if not amount.isdigit() and amount != "1e400" else amount)
    _assert_amount_refused(_send(api_client, "patch", f"/api/v1/deals/{deal.pk}", body))
    # and as a string
    _assert_amount_refused(_send(api_client, "patch", f"/api/v1/deals/{deal.pk}", json.dumps({"amount": amount})))
    deal.refresh_from_db()
    assert deal.amount == Decimal("10.00")
    listed = api_client.get("/api/v1/deals")
    assert listed.status_code == 200
    assert [d["amount"] for d in listed.json()["items"]] == ["10.00"]


@pytest.mark.parametrize("amount", ["123456789012.34", "-0.01", "0", "999999999999.99", "-999999999999.99"])
def test_valid_amount_round_trips_exactly(api_client: Client, amount: str) -> None:
    resp = _send(api_client, "post", "/api/v1/deals", json.dumps({"title": "D", "amount": amount}))
    assert resp.status_code == 201, resp.content
    deal_id = resp.json()["id"]
    assert Decimal(resp.json()["amount"]) == Decimal(amount)
    assert Deal.objects.get(pk=deal_id).amount == Decimal(amount)
    got = api_client.get(f"/api/v1/deals/{deal_id}").json()["amount"]
    assert Decimal(got) == Decimal(amount)
    assert api_client.get("/api/v1/deals").status_code == 200
    patched = _send(api_client, "patch", f"/api/v1/deals/{deal_id}", json.dumps({"amount": "1.50"}))
    assert patched.status_code == 200
    assert Decimal(patched.json()["amount"]) == Decimal("1.50")
    assert Deal.objects.get(pk=deal_id).amount == Decimal("1.50")


@pytest.mark.parametrize(
    "amount", [Decimal("1e400"), Decimal("1" * 40), Decimal("NaN"), Decimal("Infinity"), Decimal("1.234")]
)
def test_service_refuses_amounts_the_column_cannot_hold(team: Any, amount: Decimal) -> None:
    with pytest.raises(InvalidInput) as exc:
        services.deal_create(team_id=team.pk, title="D", amount=amount)
    assert exc.value.field == "amount"
    assert not Deal.objects.exists()
    deal = DealFactory(team=team, title="D", amount=Decimal("5.00"))
    with pytest.raises(InvalidInput):
        services.deal_update(deal=deal, amount=amount)
    deal.refresh_from_db()
    assert deal.amount == Decimal("5.00")


def test_model_full_clean_refuses_out_of_range_amount(team: Any) -> None:
    from django.core.exceptions import ValidationError

    for amount in (Decimal("1e400"), Decimal("1" * 40), Decimal("NaN"), Decimal("1.234")):
        deal = Deal(team=team, title="D", amount=amount)
        with pytest.raises(ValidationError) as exc:
            deal.full_clean()
        assert "amount" in exc.value.message_dict


# --- list parameters ------------------------------------------------------------------------------------
LIST_ENDPOINTS: list[tuple[str, list[str], bool]] = [
    # (url, id filters, has offset)
    ("/api/v1/contacts", ["company_id", "cursor"], False),
    ("/api/v1/companies", ["cursor"], False),
    ("/api/v1/deals", ["contact_id", "company_id", "cursor"], False),
    ("/api/v1/threads", ["deal_id"], False),
    ("/api/v1/messages", ["mailbox", "thread"], False),
    ("/api/v1/outbox", ["mailbox"], True),
    ("/api/v1/relay/holds", ["mailbox"], True),
]


def _bad_cases() -> list[Any]:
    cases = []
    for url, ids, has_offset in LIST_ENDPOINTS:
        cases += [
            pytest.param(url, "limit=0", id=f"{url}-limit0"),
            pytest.param(url, "limit=-1", id=f"{url}-limit-neg"),
            pytest.param(url, f"limit={10**30}", id=f"{url}-limit-huge"),
        ]
        if has_offset:
            cases += [
                pytest.param(url, "offset=-1", id=f"{url}-offset-neg"),
                pytest.param(url, f"offset={10**30}", id=f"{url}-offset-huge"),
            ]
        for name in ids:
            cases += [
                pytest.param(url, f"{name}={2**70}", id=f"{url}-{name}-2**70"),
                pytest.param(url, f"{name}={2**63}", id=f"{url}-{name}-2**63"),
                pytest.param(url, f"{name}=0", id=f"{url}-{name}-0"),
                pytest.param(url, f"{name}=-1", id=f"{url}-{name}-neg"),
            ]
    cases.append(pytest.param("/api/v1/messages", f"folder={2**70}&mailbox=1", id="messages-folder-2**70"))
    return cases


@pytest.mark.parametrize(("url", "query"), _bad_cases())
def test_list_parameter_out_of_range_is_422(api_client: Client, url: str, query: str) -> None:
    resp = api_client.get(f"{url}?{query}")
    assert resp.status_code == 422, resp.content
    assert resp["Content-Type"].startswith("application/json")
    assert query.split("=")[0] in resp.json()["detail"]


def _good_cases() -> list[Any]:
    cases = []
    for url, ids, has_offset in LIST_ENDPOINTS:
        cases.append(pytest.param(url, "limit=1", id=f"{url}-limit1"))
        if has_offset:
            cases.append(pytest.param(url, "offset=0&limit=10", id=f"{url}-offset0"))
        for name in ids:
            if name in ("mailbox",) and "messages" in url:
                continue  # an unknown mailbox is a 404 there (it is looked up)
            cases.append(pytest.param(url, f"{name}={2**63 - 1}", id=f"{url}-{name}-max"))
    return cases


@pytest.mark.parametrize(("url", "query"), _good_cases())
def test_list_parameter_in_range_is_200(api_client: Client, url: str, query: str) -> None:
    resp = api_client.get(f"{url}?{query}")
    assert resp.status_code == 200, resp.content


@pytest.mark.parametrize("limit_url", ["/api/v1/contacts", "/api/v1/deals", "/api/v1/threads"])
def test_limit_at_its_maximum_is_200(api_client: Client, limit_url: str) -> None:
    assert api_client.get(f"{limit_url}?limit=200").status_code == 200
    assert api_client.get(f"{limit_url}?limit=201").status_code == 422


@pytest.mark.parametrize("kind", ["contacts", "companies", "deals"])
def test_timeline_limit_and_cursor_out_of_range(api_client: Client, team: Any, kind: str) -> None:
    from tests.factories import CompanyFactory, ContactFactory

    obj = {"contacts": ContactFactory, "companies": CompanyFactory, "deals": DealFactory}[kind](team=team)
    url = f"/api/v1/{kind}/{obj.pk}/timeline"
    for bad in ("limit=0", f"limit={10**30}"):
        assert api_client.get(f"{url}?{bad}").status_code == 422
    huge = base64.urlsafe_b64encode(f"2025-01-01T00:00:00+00:00|{2**70}".encode()).decode().rstrip("=")
    resp = api_client.get(f"{url}?cursor={huge}")
    assert resp.status_code == 400, resp.content
    assert resp.json()["field"] == "cursor"
    assert api_client.get(f"{url}?limit=1").status_code == 200


def test_thread_and_message_cursors_with_huge_ids_are_400(api_client: Client) -> None:
    huge = base64.urlsafe_b64encode(f"2025-01-01T00:00:00+00:00|{2**70}".encode()).decode().rstrip("=")
    resp = api_client.get(f"/api/v1/threads?cursor={huge}")
    assert resp.status_code == 400, resp.content
    msg_cursor = base64.urlsafe_b64encode(json.dumps(["2025-01-01T00:00:00+00:00", 2**70]).encode()).decode()
    resp = api_client.get(f"/api/v1/messages?cursor={msg_cursor}")
    assert resp.status_code == 400, resp.content
    assert resp.json()["field"] == "cursor"
