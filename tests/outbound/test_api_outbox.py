"""/api/v1/outbox: access (anonymous 401, other team 404, permitted), idempotency, validation."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from django.test import Client

from mailroom.outbound.models import OutboxMessage

pytestmark = pytest.mark.django_db


def _post(client: Client, body: dict[str, Any]) -> Any:
    return client.post("/api/v1/outbox", data=json.dumps(body), content_type="application/json")


def _body(mailbox: Any, **kw: Any) -> dict[str, Any]:
    body = {"mailbox": mailbox.pk, "to": ["Client <client@client.test>"], "subject": "Hi", "text": "Hello"}
    body.update(kw)
    return body


def test_anonymous_is_401_and_creates_nothing(sink_mailbox: Any) -> None:
    resp = _post(Client(), _body(sink_mailbox))
    assert resp.status_code == 401
    assert Client().get("/api/v1/outbox").status_code == 401
    assert not OutboxMessage.objects.exists()


def test_other_team_is_404_and_creates_nothing(sink_mailbox: Any, other_team_client: Client) -> None:
    resp = _post(other_team_client, _body(sink_mailbox))
    assert resp.status_code == 404
    assert not OutboxMessage.objects.exists()


def test_compose_idempotent_and_conflict(api_client: Client, sink_mailbox: Any) -> None:
    att = {"filename": "a.txt", "content_type": "text/plain", "content": base64.b64encode(b"hello").decode()}
    body = _body(sink_mailbox, idempotency_key="abc", attachments=[att], html="<p>Hi<script>x</script></p>")
    first = _post(api_client, body)
    assert first.status_code == 201, first.content
    again = _post(api_client, body)
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert again.json()["message_id"] == first.json()["message_id"]
    conflict = _post(api_client, {**body, "text": "changed"})
    assert conflict.status_code == 409 and conflict.json()["field"] == "idempotency_key"
    assert OutboxMessage.objects.count() == 1
    row = OutboxMessage.objects.get()
    assert b"<script>" not in bytes(row.raw)


@pytest.mark.parametrize(
    ("override", "field"),
    [({"subject": "x\r\nBcc: evil@x.test"}, "subject"), ({"to": ["a@client.test\nBcc: e@x.test"]}, "to[0]"),
     ({"attachments": [{"filename": "a\r\n.txt", "content": ""}]}, "attachments[0].filename"),
     ({"attachments": [{"filename": "a.txt", "content": "!!notbase64"}]}, "attachments[0].content"),
     ({"to": ["not-an-address"]}, "to[0]"), ({"mode": "reply"}, "in_reply_to")],
)
def test_bad_input_is_400_naming_the_field(api_client: Client, sink_mailbox: Any, override: dict[str, Any],
                                           field: str) -> None:
    resp = _post(api_client, _body(sink_mailbox, **override))
    assert resp.status_code == 400, resp.content
    assert resp.json()["field"] == field and field.split("[")[0] in resp.json()["detail"]
    assert not OutboxMessage.objects.exists()


def test_reply_to_other_teams_message_is_404(api_client: Client, sink_mailbox: Any) -> None:
    from tests.factories import MessageFactory, TeamFactory

    foreign: Any = MessageFactory(team=TeamFactory())
    resp = _post(api_client, _body(sink_mailbox, mode="reply", in_reply_to=foreign.pk, to=[]))
    assert resp.status_code == 404 and not OutboxMessage.objects.exists()


def test_list_get_cancel_retry_access(api_client: Client, other_team_client: Client, sink_mailbox: Any) -> None:
    created = _post(api_client, _body(sink_mailbox, send_at="2099-01-01T00:00:00Z")).json()
    oid = created["id"]
    listed = api_client.get("/api/v1/outbox").json()
    assert ([r["id"] for r in listed["items"]], listed["count"], listed["count_kind"]) == ([oid], 1, "exact")
    assert api_client.get(f"/api/v1/outbox/{oid}").json()["state"] == "queued"
    # Other team: sees nothing, can change nothing.
    assert other_team_client.get("/api/v1/outbox").json() == {"items": [], "count": 0, "count_kind": "exact"}
    assert other_team_client.get(f"/api/v1/outbox/{oid}").status_code == 404
    assert other_team_client.post(f"/api/v1/outbox/{oid}/cancel").status_code == 404
    assert other_team_client.post(f"/api/v1/outbox/{oid}/retry").status_code == 404
    assert OutboxMessage.objects.get(pk=oid).state == "queued"
    assert Client().post(f"/api/v1/outbox/{oid}/cancel").status_code == 401
    # Permitted.
    assert api_client.post(f"/api/v1/outbox/{oid}/retry").status_code == 409
    assert api_client.post(f"/api/v1/outbox/{oid}/cancel").json()["state"] == "cancelled"
    assert api_client.post(f"/api/v1/outbox/{oid}/cancel").status_code == 409


def test_naive_send_at_rejected(api_client: Client, sink_mailbox: Any) -> None:
    resp = _post(api_client, _body(sink_mailbox, send_at="2099-01-01T00:00:00"))
    assert resp.status_code == 400 and resp.json()["field"] == "send_at"


# --- mailbox settings stored before they were validated never reach a header ------------------------
def test_stored_crlf_message_id_domain_is_not_a_header(api_client: Client, sink_mailbox: Any) -> None:
    type(sink_mailbox).objects.filter(pk=sink_mailbox.pk).update(
        message_id_domain="company.test\r\nReply-To: attacker@evil.test")
    resp = _post(api_client, _body(sink_mailbox, idempotency_key="crlf"))
    assert resp.status_code == 201, resp.content
    raw = OutboxMessage.objects.get().raw
    assert b"attacker" not in raw and b"\r\nReply-To:" not in raw


def test_non_ascii_message_id_domain_is_sent_as_idna(api_client: Client, sink_mailbox: Any) -> None:
    type(sink_mailbox).objects.filter(pk=sink_mailbox.pk).update(message_id_domain="Компания.РФ")
    resp = _post(api_client, _body(sink_mailbox, idempotency_key="idna"))
    assert resp.status_code == 201, resp.content
    assert OutboxMessage.objects.get().message_id.endswith("@xn--80aqeigdi5k.xn--p1ai")


def test_stored_crlf_in_the_mailbox_address_is_a_400_not_a_header(api_client: Client, sink_mailbox: Any) -> None:
    type(sink_mailbox).objects.filter(pk=sink_mailbox.pk).update(display_name="Sales\r\nBcc: x@evil.test")
    resp = _post(api_client, _body(sink_mailbox, idempotency_key="name"))
    assert resp.status_code == 400
    assert resp.json()["detail"] == "cannot send: from: CR, LF and NUL are not allowed"
    assert not OutboxMessage.objects.exists()
