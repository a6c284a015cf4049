"""Authentication on unsafe methods, through a client that enforces CSRF as a browser's requests are:
no credentials, a wrong Bearer token or a malformed Authorization header answer the 401 with the hint
the GET path gives (not ``403 CSRF check Failed``) on every unsafe operation of the schema; a valid
token passes; a browser session that changes data without the CSRF token is still refused (403)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.middleware.csrf import get_token
from django.test import Client, RequestFactory

from mailroom.accounts.services import token_create
from mailroom.api.main import AUTH_HINT, api
from mailroom.crm.models import Deal

pytestmark = pytest.mark.django_db

UNSAFE = ("post", "put", "patch", "delete")


def _unsafe_operations() -> list[tuple[str, str]]:
    schema = api.get_openapi_schema()
    ops = []
    for path, item in schema["paths"].items():
        for method, op in item.items():
            if method in UNSAFE:
                url = path
                for param in op.get("parameters", []):
                    if param["in"] == "path":
                        assert param["schema"]["type"] == "integer", (path, param)
                        url = url.replace("{" + param["name"] + "}", "1")
                ops.append((method, url))
    return ops


OPERATIONS = _unsafe_operations()
BAD_AUTHORIZATION = [
    pytest.param(None, id="no-credentials"),
    pytest.param("Bearer wrong-token", id="wrong-bearer"),
    pytest.param("Bearer ", id="empty-bearer"),
    pytest.param("Bearer", id="bare-scheme"),
    pytest.param("", id="empty-header"),
    pytest.param("Basic dXNlcjpwYXNz", id="basic-scheme"),
    pytest.param("garbage \u00e9\u00ff", id="malformed"),
    pytest.param("Bearer " + "x" * 5000, id="huge-token"),
]


def test_schema_has_unsafe_operations_of_every_router() -> None:
    prefixes = {url.split("/")[3] for _, url in OPERATIONS}
    assert {"mailboxes", "contacts", "companies", "deals", "ignore-list", "threads", "outbox", "relay"} <= prefixes
    assert len(OPERATIONS) >= 20


def _call(client: Client, method: str, url: str, **extra: Any) -> Any:
    return getattr(client, method)(url, data=json.dumps({}), content_type="application/json", **extra)


def _assert_401(resp: Any) -> None:
    assert resp.status_code == 401, resp.content
    assert resp["Content-Type"] == "application/json; charset=utf-8"
    assert resp.json() == {"detail": AUTH_HINT}
    assert resp["WWW-Authenticate"] == 'Bearer realm="api"'


@pytest.mark.parametrize("authorization", BAD_AUTHORIZATION)
def test_unsafe_operations_without_valid_credentials_are_401_with_the_get_hint(authorization: str | None) -> None:
    client = Client(enforce_csrf_checks=True)
    extra = {} if authorization is None else {"HTTP_AUTHORIZATION": authorization}
    get = client.get("/api/v1/deals", **extra)
    _assert_401(get)
    for method, url in OPERATIONS:
        resp = _call(client, method, url, **extra)
        assert resp.status_code == 401, (method, url, resp.status_code, resp.content)
        _assert_401(resp)
    assert not Deal.objects.exists()


@pytest.mark.parametrize("authorization", ["Bearer wrong-token", "Basic dXNlcjpwYXNz", ""])
def test_wrong_token_beside_a_valid_session_is_401(user: Any, authorization: str) -> None:
    """An Authorization header makes it a token client's request: the session cookie does not stand in."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    for method, url in OPERATIONS:
        _assert_401(_call(client, method, url, HTTP_AUTHORIZATION=authorization))
    _assert_401(client.get("/api/v1/deals", HTTP_AUTHORIZATION=authorization))
    assert not Deal.objects.exists()


def test_valid_token_passes_every_unsafe_operation(user: Any) -> None:
    client = Client(enforce_csrf_checks=True, headers={"Authorization": f"Bearer {token_create(user=user)}"})
    for method, url in OPERATIONS:
        resp = _call(client, method, url)
        assert resp.status_code != 401 and resp.status_code < 500, (method, url, resp.status_code, resp.content)
        assert b"CSRF" not in resp.content, (method, url, resp.content)
    created = client.post("/api/v1/deals", data=json.dumps({"title": "D"}), content_type="application/json")
    assert created.status_code == 201, created.content
    assert list(Deal.objects.values_list("title", flat=True)) == ["D"]


def test_session_post_without_csrf_token_is_403_and_with_it_passes(user: Any) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    body = json.dumps({"title": "D"})
    for method, url in OPERATIONS:
        resp = _call(client, method, url)
        assert resp.status_code == 403, (method, url, resp.status_code, resp.content)
        assert resp["Content-Type"] == "application/json; charset=utf-8"
        assert resp.json()["detail"].startswith("CSRF check failed:")
    refused = client.post("/api/v1/deals", data=body, content_type="application/json")
    assert refused.status_code == 403
    assert "X-CSRFToken" in refused.json()["detail"]
    assert not Deal.objects.exists()
    # a GET needs no token; the browser's token (cookie + header) lets the change through
    assert client.get("/api/v1/deals").status_code == 200
    browser = RequestFactory().get("/")
    masked = get_token(browser)
    client.cookies["csrftoken"] = browser.META["CSRF_COOKIE"]
    ok = client.post("/api/v1/deals", data=body, content_type="application/json", HTTP_X_CSRFTOKEN=masked)
    assert ok.status_code == 201, ok.content
    assert list(Deal.objects.values_list("title", flat=True)) == ["D"]


@pytest.mark.parametrize("session_key", ["garbage", "", "x" * 4000])
def test_unknown_session_cookie_is_401_not_csrf(session_key: str) -> None:
    client = Client(enforce_csrf_checks=True)
    client.cookies["sessionid"] = session_key
    for method, url in OPERATIONS:
        _assert_401(_call(client, method, url))
