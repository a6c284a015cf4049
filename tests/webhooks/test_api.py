"""/api/v1/webhooks: access (anonymous 401, other team 404, members read, admins change), the
secret shown once (never in list, get or the admin), host changes, rotation, the delivery log."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from standardwebhooks import Webhook

from mailroom.events.models import Event
from mailroom.events.services import event_record
from mailroom.webhooks.models import WebhookDelivery, WebhookEndpoint
from mailroom.webhooks.services import webhook_deliver_due
from tests.factories import UserFactory
from tests.webhooks.conftest import Receiver

pytestmark = pytest.mark.django_db


def _send(client: Client, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    fn = getattr(client, method)
    if body is None:
        return fn(f"/api/v1/webhooks{path}")
    return fn(f"/api/v1/webhooks{path}", data=json.dumps(body), content_type="application/json")


def _create(client: Client, url: str, **kw: Any) -> Any:
    return _send(client, "post", "", {"url": url, **kw})


def test_anonymous_is_401_and_creates_nothing(admin_api_client: Client) -> None:
    made = _create(admin_api_client, "https://hooks.example.com/x").json()
    anon = Client()
    assert _create(anon, "https://hooks.example.com/y").status_code == 401
    for method, path in [("get", ""), ("get", f"/{made['id']}"), ("patch", f"/{made['id']}"),
                         ("delete", f"/{made['id']}"), ("post", f"/{made['id']}/rotate-secret"),
                         ("get", f"/{made['id']}/deliveries")]:
        assert _send(anon, method, path, {} if method == "patch" else None).status_code == 401, (method, path)
    assert WebhookEndpoint.objects.count() == 1


def test_other_team_is_404_and_changes_nothing(admin_api_client: Client, other_team_client: Client) -> None:
    made = _create(admin_api_client, "https://hooks.example.com/x").json()
    ep = WebhookEndpoint.objects.get()
    pid = made["id"]
    assert _send(other_team_client, "get", "").json()["items"] == []
    for method, path, body in [("get", f"/{pid}", None), ("patch", f"/{pid}", {"description": "x"}),
                               ("delete", f"/{pid}", None), ("post", f"/{pid}/rotate-secret", None),
                               ("post", f"/{pid}/disable", None), ("get", f"/{pid}/deliveries", None),
                               ("post", f"/{pid}/replay", {"since": "2020-01-01T00:00:00Z"})]:
        resp = _send(other_team_client, method, path, body)
        assert resp.status_code == 404, (method, path, resp.content)
        assert resp.json() == {"detail": f"webhook endpoint {pid} not found"}
    after = WebhookEndpoint.objects.get()
    assert (after.description, after.secret_enc, after.enabled) == ("", ep.secret_enc, True)


def test_members_read_admins_change(api_client: Client, admin_api_client: Client, team: Any) -> None:
    member = Client(headers={"Authorization": "Bearer " + _member_token(team)})
    resp = _create(member, "https://hooks.example.com/x")
    assert resp.status_code == 403 and "team admin" in resp.json()["detail"]
    pid = _create(admin_api_client, "https://hooks.example.com/x").json()["id"]
    assert _send(member, "get", f"/{pid}").status_code == 200
    assert _send(member, "post", f"/{pid}/disable").status_code == 403
    assert WebhookEndpoint.objects.get().enabled


def _member_token(team: Any) -> str:
    from mailroom.accounts.services import token_create

    return token_create(user=UserFactory(team=team), name="member")


def test_secret_shown_once_never_in_list_get_or_admin(admin_api_client: Client, team: Any) -> None:
    resp = _create(admin_api_client, "https://hooks.example.com/x", event_types=["message.sent"], description="CRM")
    assert resp.status_code == 201, resp.content
    body = resp.json()
    secret = body["secret"]
    assert secret.startswith("whsec_") and len(secret) == 6 + 32
    assert (body["url"], body["event_types"], body["description"], body["enabled"], body["team"]) == (
        "https://hooks.example.com/x", ["message.sent"], "CRM", True, team.pk)
    ep = WebhookEndpoint.objects.get()
    assert ep.get_secret() == secret and secret not in ep.secret_enc  # encrypted at rest
    listed = _send(admin_api_client, "get", "")
    got = _send(admin_api_client, "get", f"/{body['id']}")
    patched = _send(admin_api_client, "patch", f"/{body['id']}", {"description": "CRM 2"})
    assert listed.json()["count"] == 1 and listed.json()["count_kind"] == "exact"
    for r in (listed, got, patched):
        assert r.status_code == 200
        assert secret.encode() not in r.content and b'"secret"' not in r.content and b"whsec_" not in r.content
    su = UserFactory(is_superuser=True, is_staff=True)
    web = Client()
    web.force_login(su)
    for page in (reverse("admin:webhooks_webhookendpoint_changelist"),
                 reverse("admin:webhooks_webhookendpoint_change", args=[ep.pk])):
        r = web.get(page)
        assert r.status_code == 200
        assert secret.encode() not in r.content and ep.secret_enc.encode() not in r.content


def test_bad_input_is_400_naming_the_field(admin_api_client: Client) -> None:
    for body, field in [({"url": "http://hooks.example.com/x"}, "url"), ({"url": "https://10.0.0.1/x"}, "url"),
                        ({"url": "https://hooks.example.com/x", "event_types": ["nope"]}, "event_types")]:
        resp = _send(admin_api_client, "post", "", body)
        assert resp.status_code == 400 and resp.json()["field"] == field, resp.content
    assert not WebhookEndpoint.objects.exists()


def test_host_change_needs_a_new_secret(admin_api_client: Client, team: Any, make_receiver: Any) -> None:
    first, second = make_receiver(), make_receiver()
    made = _create(admin_api_client, first.url).json()
    pid, old = made["id"], made["secret"]
    # Another path on the same host: the secret stays.
    resp = _send(admin_api_client, "patch", f"/{pid}", {"url": first.url + "/v2"})
    assert resp.status_code == 200 and "secret" not in resp.json()
    # Another host (here: port): refused without a new secret, and nothing changes.
    resp = _send(admin_api_client, "patch", f"/{pid}", {"url": second.url, "description": "moved"})
    assert resp.status_code == 409 and resp.json()["field"] == "url"
    ep = WebhookEndpoint.objects.get()
    assert (ep.url, ep.description, ep.get_secret()) == (first.url + "/v2", "", old)
    resp = _send(admin_api_client, "patch", f"/{pid}", {"url": second.url, "rotate_secret": True})
    assert resp.status_code == 200
    new = resp.json()["secret"]
    assert new != old and resp.json()["previous_secret_expires_at"] is None
    event_record(team_id=team.pk, kind=Event.Kind.MESSAGE_SENT, payload={"message": 1})
    assert webhook_deliver_due() == 1
    (req,) = second.requests
    assert first.requests == []
    assert " " not in req.headers["webhook-signature"]  # the old secret does not follow to the new host
    Webhook(new).verify(req.body, req.headers)


def test_rotate_enable_disable_delete_and_log(admin_api_client: Client, team: Any, receiver: Receiver) -> None:
    made = _create(admin_api_client, receiver.url).json()
    pid, old = made["id"], made["secret"]
    rotated = _send(admin_api_client, "post", f"/{pid}/rotate-secret")
    assert rotated.status_code == 200
    new = rotated.json()["secret"]
    assert new != old and rotated.json()["previous_secret_expires_at"] is not None
    assert _send(admin_api_client, "post", f"/{pid}/disable").json()["enabled"] is False
    event_record(team_id=team.pk, kind=Event.Kind.MESSAGE_SENT, payload={"message": 1})
    assert not WebhookDelivery.objects.exists()  # disabled: nothing written for it
    assert _send(admin_api_client, "post", f"/{pid}/enable").json()["enabled"] is True
    event_record(team_id=team.pk, kind=Event.Kind.MESSAGE_SENT, payload={"message": 2})
    assert webhook_deliver_due() == 1
    (req,) = receiver.requests
    Webhook(new).verify(req.body, req.headers)
    Webhook(old).verify(req.body, req.headers)
    log = _send(admin_api_client, "get", f"/{pid}/deliveries").json()
    assert log["count"] == 1
    (item,) = log["items"]
    assert (item["state"], item["attempts"], item["last_status"], item["event_type"], item["webhook_id"]) == (
        "delivered", 1, 200, "message.sent", req.headers["webhook-id"])
    detail = _send(admin_api_client, "get", f"/{pid}/deliveries/{item['id']}").json()
    assert [(a["status_code"], a["success"], a["response_excerpt"]) for a in detail["attempt_log"]] == [
        (200, True, "answer 1")]
    replay = _send(admin_api_client, "post", f"/{pid}/deliveries/{item['id']}/replay")
    assert replay.status_code == 200 and replay.json()["state"] == "pending"
    since = _send(admin_api_client, "post", f"/{pid}/replay", {"since": "2000-01-01T00:00:00Z"})
    assert since.json() == {"scheduled": 2}  # the one delivered and the one from while it was disabled
    assert webhook_deliver_due() == 2
    assert [r.headers["webhook-id"] for r in receiver.requests[1:]] == [
        f"msg_{WebhookDelivery.objects.order_by('event_id').first().event_id}_{pid}", req.headers["webhook-id"]]
    assert _send(admin_api_client, "delete", f"/{pid}").status_code == 204
    assert not WebhookEndpoint.objects.exists() and not WebhookDelivery.objects.exists()
