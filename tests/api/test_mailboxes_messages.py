"""REST API for mailboxes and messages: create/test/sync against real Dovecot, access control,
cursor pagination, raw download, clear 4xx errors."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client

from mailroom.conversations import pipeline
from mailroom.conversations.models import Message
from mailroom.ingest.imap.worker import mailbox_sync_once
from mailroom.mailboxes.models import Mailbox
from tests.factories import MailboxFactory
from tests.ingest.helpers import mailbox_for, make_mail

pytestmark = pytest.mark.django_db(transaction=True)


def _post(client: Client, url: str, data: dict[str, Any]) -> Any:
    return client.post(url, data=json.dumps(data), content_type="application/json")


def test_anonymous_is_401_with_hint(db: Any) -> None:
    resp = Client().get("/api/v1/mailboxes")
    assert resp.status_code == 401
    assert "Authorization: Bearer" in resp.json()["detail"]


def test_create_test_sync_and_read_messages(admin_api_client: Client, mail_user: Any) -> None:
    api_client = admin_api_client
    user = mail_user()
    user.dovecot.deliver_many(user.email, [make_mail(i) for i in range(5)])
    resp = _post(api_client, "/api/v1/mailboxes", {
        "email": user.email, "imap_host": "127.0.0.1", "imap_port": user.dovecot.imap_port, "imap_security": "plain",
        "smtp_host": "127.0.0.1", "smtp_port": 25, "smtp_security": "plain", "password": user.password,
    })
    assert resp.status_code == 201, resp.content
    body = resp.json()
    assert body["health"] == "new" and user.password not in json.dumps(body)
    mb = Mailbox.objects.get(pk=body["id"])
    assert user.password not in mb.secret_enc  # encrypted at rest
    assert mb.get_secret() == {"password": user.password}

    test = api_client.post(f"/api/v1/mailboxes/{mb.pk}/test").json()
    assert test["imap_ok"] is True
    assert {"name": "Sent", "role": "sent"} in test["folders"]
    assert "IDLE" in test["imap_capabilities"]

    mailbox_sync_once(mb)
    pipeline.drain()
    detail = api_client.get(f"/api/v1/mailboxes/{mb.pk}").json()
    assert detail["health"] == "ok"
    inbox = next(f for f in detail["folders"] if f["role"] == "inbox")
    assert (inbox["stored_count"], inbox["server_count"], inbox["backfill_done"]) == (5, 5, True)

    page1 = api_client.get(f"/api/v1/messages?mailbox={mb.pk}&limit=3").json()
    assert len(page1["items"]) == 3 and page1["next_cursor"]
    page2 = api_client.get(f"/api/v1/messages?mailbox={mb.pk}&limit=3&cursor={page1['next_cursor']}").json()
    assert len(page2["items"]) == 2 and page2["next_cursor"] is None
    subjects = [m["subject"] for m in page1["items"] + page2["items"]]
    assert subjects == [f"Тема письма {i} / subject {i}" for i in (4, 3, 2, 1, 0)]

    one = api_client.get(f"/api/v1/messages/{page1['items'][0]['id']}").json()
    assert one["from_address"] == "client@client.test"
    assert one["to"] == [{"address": "manager@company.test", "name": "", "role": "to", "contact": one["to"][0]["contact"]}]
    assert one["sources"][0]["kind"] == "imap" and one["sources"][0]["folder"] == "INBOX"
    assert "Message number 4" in one["text"]

    raw = api_client.get(f"/api/v1/messages/{one['id']}/raw")
    assert raw.status_code == 200
    assert raw["Content-Type"] == "message/rfc822"
    assert raw["X-Content-Type-Options"] == "nosniff"
    assert b"Message number 4" in raw.content


def test_other_team_sees_nothing_and_changes_nothing(api_client: Client, other_team_client: Client, user: Any) -> None:
    team = user.memberships.first().team
    mb = MailboxFactory(team=team)
    msg_resp = other_team_client.get(f"/api/v1/mailboxes/{mb.pk}")
    assert msg_resp.status_code == 404
    assert other_team_client.get("/api/v1/mailboxes").json() == []
    assert other_team_client.delete(f"/api/v1/mailboxes/{mb.pk}").status_code == 404
    assert other_team_client.patch(
        f"/api/v1/mailboxes/{mb.pk}", data=json.dumps({"name": "stolen"}), content_type="application/json"
    ).status_code == 404
    mb.refresh_from_db()
    assert mb.name != "stolen"
    assert Mailbox.objects.filter(pk=mb.pk).exists()
    assert other_team_client.get(f"/api/v1/messages?mailbox={mb.pk}").status_code == 404
    assert api_client.get(f"/api/v1/mailboxes/{mb.pk}").status_code == 200


def test_bad_requests_say_what_to_fix(admin_api_client: Client) -> None:
    api_client = admin_api_client
    resp = _post(api_client, "/api/v1/mailboxes", {"email": "x@example.com", "imap_host": "imap.example.com",
                                                     "imap_security": "plain", "password": "p"})
    assert resp.status_code == 400
    assert resp.json() == {
        "detail": "imap: plain (unencrypted) connections are only allowed to loopback; use 'ssl' or 'starttls' for imap.example.com",
        "field": "imap_security",
    }
    resp = _post(api_client, "/api/v1/mailboxes", {"email": "x@example.com", "provider": "yandex"})
    assert resp.status_code == 400
    assert resp.json()["detail"] == "password is required (an app password for Gmail, Yandex and Mail.ru)"
    resp = _post(api_client, "/api/v1/mailboxes", {"email": "x@example.com", "imap_port": "abc"})
    assert resp.status_code == 422
    assert resp.json()["detail"].startswith("invalid request: imap_port:")
    resp = api_client.get("/api/v1/messages?cursor=garbage")
    assert resp.status_code == 400
    assert "cursor is not valid" in resp.json()["detail"]
    assert Mailbox.objects.count() == 0


def test_provider_preset_fills_servers(admin_api_client: Client) -> None:
    api_client = admin_api_client
    resp = _post(api_client, "/api/v1/mailboxes", {"email": "Sales@Yandex.ru", "provider": "yandex", "password": "app-pass"})
    assert resp.status_code == 201
    body = resp.json()
    assert (body["email"], body["imap_host"], body["imap_port"], body["imap_security"]) == (
        "sales@yandex.ru", "imap.yandex.ru", 993, "ssl")
    assert (body["smtp_host"], body["smtp_port"]) == ("smtp.yandex.ru", 465)
    dup = _post(api_client, "/api/v1/mailboxes", {"email": "sales@yandex.ru", "provider": "yandex", "password": "x"})
    assert dup.status_code == 409


def test_openapi_is_served(api_client: Client) -> None:
    spec = api_client.get("/api/v1/openapi.json").json()
    assert "/api/v1/mailboxes" in spec["paths"]
    assert "/api/v1/messages/{message_id}/raw" in spec["paths"]


def test_message_of_other_team_is_404(api_client: Client, other_team_client: Client, user: Any) -> None:
    from tests.factories import MessageFactory

    msg = MessageFactory(team=user.memberships.first().team)
    assert other_team_client.get(f"/api/v1/messages/{msg.pk}").status_code == 404
    assert other_team_client.get(f"/api/v1/messages/{msg.pk}/raw").status_code == 404
    assert Message.objects.filter(pk=msg.pk).exists()


def test_list_shows_a_message_once_it_is_linked_with_an_exact_count(api_client: Client, user: Any) -> None:
    from datetime import UTC, datetime, timedelta

    from mailroom.ingest.rawstore import IncomingRaw, store_batch
    from tests.conversations.mail import raw_email

    team = user.memberships.get().team
    mb = MailboxFactory(team=team)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    items = [IncomingRaw(raw=raw_email(mid=f"c{i}@client.test", frm="a@client.test", subject=f"S{i}",
                                       date=t0 + timedelta(minutes=i)), key=f"count:{i}") for i in range(3)]
    res = store_batch(team_id=team.pk, items=items, kind="lmtp", mailbox=mb)
    stored = list(Message.objects.filter(pk__in=res.message_pks))
    page = api_client.get("/api/v1/messages").json()
    assert (page["items"], page["count"]) == ([], 0)
    tooling = api_client.get("/api/v1/messages?state=stored").json()
    assert tooling["count"] == 3 and {m["id"] for m in tooling["items"]} == {m.pk for m in stored}
    assert api_client.get("/api/v1/messages?state=any").json()["count"] == 3
    pipeline.drain()
    page = api_client.get("/api/v1/messages?limit=2").json()
    assert page["count"] == 3 and len(page["items"]) == 2
    assert all(m["thread"] is not None and m["state"] == "linked" for m in page["items"])
    rest = api_client.get(f"/api/v1/messages?limit=2&cursor={page['next_cursor']}").json()
    assert rest["count"] == 3 and len(rest["items"]) == 1
    assert api_client.get("/api/v1/messages?state=bogus").status_code == 400


def test_folders_show_linked_and_quarantined_of_the_current_uidvalidity_after_a_real_sync(
    api_client: Client, user: Any, mail_user: Any, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stored, linked and quarantined, in UIDs of the folder's current UIDVALIDITY: a message the
    parser fails on three times is quarantined, the rest are linked; after the server renumbers the
    folder the old UIDs' sources no longer count."""
    from mailroom.parsing import workers

    settings.MAILROOM_PARSE_PROCESSES = 0  # the failing parser is patched into this process
    real = workers.parse_message

    def failing_on_poison(raw: bytes, **kwargs: Any) -> Any:
        if b"poison" in raw:
            raise ValueError("parser exploded on this one")
        return real(raw, **kwargs)

    monkeypatch.setattr(workers, "parse_message", failing_on_poison)
    box = mail_user()
    box.dovecot.deliver_many(box.email, [make_mail(i) for i in range(3)] + [make_mail(3, subject="poison")])
    mb = mailbox_for(box, team=user.memberships.get().team, sync_roles=["inbox", "sent"])
    mailbox_sync_once(mb)
    pipeline.drain()

    def counts() -> dict[str, tuple[int, int, int, int]]:
        [listed] = api_client.get("/api/v1/mailboxes").json()
        assert listed == api_client.get(f"/api/v1/mailboxes/{mb.pk}").json()
        return {f["role"]: (f["server_count"], f["stored_count"], f["linked_count"], f["quarantined_count"])
                for f in listed["folders"] if f["selected"]}

    assert counts() == {"inbox": (4, 4, 3, 1), "sent": (0, 0, 0, 0)}
    box.dovecot.reset_uidvalidity(box.email, "INBOX")
    box.dovecot.deliver(box.email, make_mail(4))
    mailbox_sync_once(mb)
    pipeline.drain()
    assert counts() == {"inbox": (5, 5, 4, 1), "sent": (0, 0, 0, 0)}  # not 7 linked: old UIDs left out


def test_mailbox_list_counts_all_folders_in_one_query(api_client: Client, user: Any) -> None:
    """Listing many mailboxes costs the same number of queries as listing one (no query per folder)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from tests.factories import FolderFactory

    team = user.memberships.get().team

    def queries() -> int:
        with CaptureQueriesContext(connection) as ctx:
            assert api_client.get("/api/v1/mailboxes").status_code == 200
        return len(ctx.captured_queries)

    FolderFactory(mailbox=MailboxFactory(team=team))
    queries()  # the token's first use is recorded once
    one = queries()
    for _ in range(3):
        mailbox = MailboxFactory(team=team)
        for name in ("INBOX", "Sent", "Archive"):
            FolderFactory(mailbox=mailbox, name=name)
    assert queries() == one
