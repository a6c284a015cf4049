from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from tests.factories import FolderFactory, MailboxFactory, MessageFactory, TeamFactory

pytestmark = pytest.mark.django_db


def test_home_shows_my_mailboxes_progress_and_mail_only(user: Any, team: Any) -> None:
    mb = MailboxFactory(team=team, email="sales@company.test", health="syncing")
    FolderFactory(mailbox=mb, server_count=200, stored_count=50, backfill_done=False)
    MessageFactory(team=team, subject="Счёт на оплату")
    other = MailboxFactory(team=TeamFactory(), email="secret@other.test")
    MessageFactory(team=other.team, subject="Not yours")
    client = Client()
    client.force_login(user)
    page = client.get("/").content.decode()
    assert "sales@company.test" in page and "INBOX: 50 / 200" in page
    assert '<progress max="200" value="50">' in page
    assert "Счёт на оплату" in page
    assert "secret@other.test" not in page and "Not yours" not in page
    partial = client.get("/mailboxes/status").content.decode()
    assert partial.startswith('<table id="mailboxes">') and "INBOX: 50 / 200" in partial


def test_home_needs_login(db: Any) -> None:
    resp = Client().get("/")
    assert resp.status_code == 302 and resp["Location"] == "/login/?next=/"
