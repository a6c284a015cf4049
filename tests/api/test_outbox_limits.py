"""Compose size limits: Django's request cap is what the largest compose the service allows takes
(attachments up to outbound.limits.MAX_TOTAL_ATTACHMENTS, as base64 in JSON), so a 20 MB attachment
is accepted and stored byte for byte; a body over the cap is a JSON 413 that names the limit on every
API endpoint (not Django's HTML 400); attachments over the service's limit but under the cap are a JSON
400 naming the field."""

from __future__ import annotations

import base64
import email
import email.policy
import json
import random
from typing import Any

import pytest
from django.conf import settings
from django.middleware.csrf import get_token
from django.test import Client, RequestFactory

from mailroom.outbound.limits import MAX_COMPOSE_REQUEST_BYTES, MAX_TOTAL_ATTACHMENTS, MIB, base64_length
from mailroom.outbound.models import OutboxMessage
from tests.factories import MailboxFactory

pytestmark = pytest.mark.django_db

JSON_TYPE = "application/json; charset=utf-8"


@pytest.fixture
def mailbox(team: Any) -> Any:
    return MailboxFactory(team=team, email="manager@company.test")


def _compose(mailbox: Any, attachments: list[tuple[str, bytes]], **kw: Any) -> bytes:
    body = {
        "mailbox": mailbox.pk, "to": ["client@client.test"], "subject": "Files", "text": "See attached.",
        "attachments": [{"filename": name, "content_type": "application/octet-stream",
                         "content": base64.b64encode(data).decode()} for name, data in attachments],
    }
    body.update(kw)
    return json.dumps(body).encode()


def _post(client: Client, raw: bytes, url: str = "/api/v1/outbox", content_type: str = "application/json") -> Any:
    return client.post(url, data=raw, content_type=content_type)


def _stored_attachments(row: OutboxMessage) -> dict[str, bytes]:
    msg = email.message_from_bytes(bytes(row.raw), policy=email.policy.default)
    out = {}
    for part in msg.iter_attachments():
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        out[str(part.get_filename())] = payload
    return out


def test_request_cap_is_derived_from_the_attachment_limit() -> None:
    assert settings.DATA_UPLOAD_MAX_MEMORY_SIZE == MAX_COMPOSE_REQUEST_BYTES
    assert MAX_COMPOSE_REQUEST_BYTES > base64_length(MAX_TOTAL_ATTACHMENTS) > MAX_TOTAL_ATTACHMENTS
    assert base64_length(3) == 4 and base64_length(4) == 8 and base64_length(0) == 0
    assert all(base64_length(n) == len(base64.b64encode(b"x" * n)) for n in range(50))


def test_compose_with_a_20_mb_attachment_is_stored_exactly(api_client: Client, mailbox: Any) -> None:
    data = random.Random(20).randbytes(20 * MIB)
    raw = _compose(mailbox, [("big.bin", data)])
    assert len(raw) > 2_621_440  # over Django's default cap, which answered an HTML 400
    resp = _post(api_client, raw)
    assert resp.status_code == 201, resp.content[:500]
    row = OutboxMessage.objects.get()
    assert resp.json()["id"] == row.pk
    assert _stored_attachments(row) == {"big.bin": data}


def test_the_largest_allowed_compose_fits_the_request_cap(api_client: Client, mailbox: Any) -> None:
    """All MAX_TOTAL_ATTACHMENTS in two attachments, with a 1 MB text and a 1 MB html body."""
    rnd = random.Random(25)
    first = rnd.randbytes(MAX_TOTAL_ATTACHMENTS - 1000)
    second = rnd.randbytes(1000)
    raw = _compose(mailbox, [("a.bin", first), ("b.bin", second)], text="t" * MIB, html="<p>" + "h" * MIB + "</p>")
    assert len(raw) <= settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    resp = _post(api_client, raw)
    assert resp.status_code == 201, resp.content[:500]
    assert _stored_attachments(OutboxMessage.objects.get()) == {"a.bin": first, "b.bin": second}


def _csrf_secret() -> str:
    browser = RequestFactory().get("/")
    get_token(browser)
    return str(browser.META["CSRF_COOKIE"])


def _assert_413(resp: Any, limit: int) -> None:
    assert resp.status_code == 413, resp.content[:500]
    assert resp["Content-Type"] == JSON_TYPE
    body = resp.json()
    assert body["limit"] == limit
    assert body["detail"].startswith(f"request body too large: at most {limit} bytes (")
    assert "attachments may total 25 MB before base64" in body["detail"]


def test_body_over_the_cap_is_a_json_413_naming_the_limit(api_client: Client, mailbox: Any) -> None:
    cap = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    raw = _compose(mailbox, [("big.bin", b"\0" * (MAX_TOTAL_ATTACHMENTS // 2))])
    raw = raw[:-1] + b" " * (cap + 1 - len(raw)) + b"}"  # JSON whitespace up to one byte over
    assert len(raw) == cap + 1
    _assert_413(_post(api_client, raw), cap)
    assert f"at most {cap} bytes (37.3 MB)" in _post(api_client, raw).json()["detail"]
    assert not OutboxMessage.objects.exists()
    # exactly at the cap it is read (and answered by the service)
    at_cap = raw[:-2] + b"}"
    assert len(at_cap) == cap
    assert _post(api_client, at_cap).status_code == 201


@pytest.mark.parametrize("content_type", ["application/json", "text/plain", "application/x-www-form-urlencoded"])
@pytest.mark.parametrize(("method", "url"), [("post", "/api/v1/outbox"), ("post", "/api/v1/deals"),
                                             ("patch", "/api/v1/deals/1"), ("put", "/api/v1/threads/1/deal")])
def test_any_api_body_over_the_cap_is_a_json_413(settings: Any, api_client: Client, method: str, url: str,
                                                 content_type: str) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    resp = getattr(api_client, method)(url, data=b"{" + b" " * 1000 + b"}", content_type=content_type)
    _assert_413(resp, 1000)


def test_session_form_body_over_the_cap_is_a_json_413(settings: Any, user: Any) -> None:
    """The CSRF check of a session request reads a form body: too large is the same JSON 413."""
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    client.cookies["csrftoken"] = _csrf_secret()  # with the cookie the check reads the form's token
    resp = client.post("/api/v1/deals", data="a=" + "b" * 1000, content_type="application/x-www-form-urlencoded")
    _assert_413(resp, 1000)


def test_too_many_form_fields_is_a_json_413(settings: Any, user: Any) -> None:
    settings.DATA_UPLOAD_MAX_NUMBER_FIELDS = 10
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    client.cookies["csrftoken"] = _csrf_secret()  # with the cookie the check reads the form's token
    resp = client.post("/api/v1/deals", data="&".join(f"f{i}=1" for i in range(11)),
                       content_type="application/x-www-form-urlencoded")
    assert resp.status_code == 413, resp.content
    assert resp["Content-Type"] == JSON_TYPE
    assert resp.json() == {"detail": "request too large: at most 10 form fields are accepted", "limit": 10}


LIMIT_DETAIL = "attachments: more than 25 MB (26214400 bytes) in total (attachments[{}] goes over); send larger files as links"


@pytest.mark.parametrize(
    ("sizes", "over"),
    [pytest.param([MAX_TOTAL_ATTACHMENTS + 1], 0, id="one-byte-over"),
     pytest.param([MAX_TOTAL_ATTACHMENTS + 3000], 0, id="one-attachment"),
     pytest.param([MAX_TOTAL_ATTACHMENTS // 2, MAX_TOTAL_ATTACHMENTS // 2, 1], 2, id="third-goes-over"),
     pytest.param([1, MAX_TOTAL_ATTACHMENTS], 1, id="second-goes-over")],
)
def test_attachments_over_the_service_limit_are_a_400_naming_the_field(
    api_client: Client, mailbox: Any, sizes: list[int], over: int
) -> None:
    raw = _compose(mailbox, [(f"f{i}.bin", b"\xff" * n) for i, n in enumerate(sizes)])
    assert len(raw) <= settings.DATA_UPLOAD_MAX_MEMORY_SIZE  # under the cap: the service answers
    resp = _post(api_client, raw)
    assert resp.status_code == 400, resp.content[:500]
    assert resp["Content-Type"] == JSON_TYPE
    assert resp.json() == {"detail": LIMIT_DETAIL.format(over), "field": "attachments"}
    assert not OutboxMessage.objects.exists()


def test_exactly_the_service_limit_is_accepted(api_client: Client, mailbox: Any) -> None:
    data = b"\xff" * MAX_TOTAL_ATTACHMENTS
    resp = _post(api_client, _compose(mailbox, [("max.bin", data)]))
    assert resp.status_code == 201, resp.content[:500]
    assert _stored_attachments(OutboxMessage.objects.get()) == {"max.bin": data}
