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
    assert "sales@company.test" in page and "INBOX: 50 / 0 / 200" in page
    assert '<progress max="200" value="50">' in page
    assert "Счёт на оплату" in page
    assert "secret@other.test" not in page and "Not yours" not in page
    partial = client.get("/mailboxes/status").content.decode()
    assert partial.startswith('<table id="mailboxes">') and "INBOX: 50 / 0 / 200" in partial


def test_home_needs_login(db: Any) -> None:
    resp = Client().get("/")
    assert resp.status_code == 302 and resp["Location"] == "/login/?next=/"


@pytest.mark.parametrize(
    ("lang", "labels"),
    [
        ("en", ["held for review: sender not verified", "sender not authenticated",
                "claims one of our addresses, not authenticated"]),
        ("ru", ["на проверке: отправитель не подтверждён", "отправитель не аутентифицирован",
                "выдаёт себя за наш адрес, не подтверждено"]),
    ],
)
def test_recent_mail_says_who_could_not_be_verified(user: Any, team: Any, lang: str, labels: list[str]) -> None:
    def flagged(subject: str, *flags: str) -> None:
        MessageFactory(team=team, subject=subject, routing={"thread": {"flags": list(flags), "rules": []}})

    flagged("Forged", "unverified")
    flagged("Unsigned answer", "unauthenticated")
    flagged("Our address", "suspicious", "unverified")
    flagged("Plain")
    client = Client(HTTP_ACCEPT_LANGUAGE=lang)
    client.force_login(user)
    page = client.get("/").content.decode()
    rows = {r.split("</td><td>")[2].split("</td>")[0]: r for r in page.split("<tr")[2:] if "</td><td>" in r}
    for subject, label in zip(["Forged", "Unsigned answer", "Our address"], labels, strict=True):
        assert f"⚠ {label}</span>" in rows[subject]
    assert "⚠" not in rows["Plain"]


@pytest.mark.parametrize(
    ("lang", "header", "quarantined"),
    [
        ("en", "Folders (stored / linked / on the server)", "1 quarantined"),
        ("ru", "Папки (загружено / обработано / на сервере)", "1 в карантине"),
    ],
)
def test_mailbox_table_shows_stored_linked_and_on_the_server(
    user: Any, team: Any, lang: str, header: str, quarantined: str
) -> None:
    from datetime import UTC, datetime, timedelta

    from mailroom.conversations.models import Message
    from tests.conversations.mail import ingest, raw_email

    mb = MailboxFactory(team=team, email="sales@company.test", health="syncing")
    inbox = FolderFactory(mailbox=mb, server_count=9, stored_count=4, backfill_done=False)
    FolderFactory(mailbox=mb, name="Sent", role="sent", server_count=0, stored_count=0, backfill_done=True)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    stored = ingest(team, mb, *[raw_email(mid=f"w{i}@client.test", frm="anna@client.test", subject=f"S{i}",
                                          date=t0 + timedelta(minutes=i)) for i in range(4)], folder=inbox)
    # As the pipeline leaves a message it failed on three times (tests/api covers the real failure).
    Message.objects.filter(pk=stored[0].pk).update(state=Message.State.QUARANTINED)
    client = Client(HTTP_ACCEPT_LANGUAGE=lang)
    client.force_login(user)
    for url in ("/", "/mailboxes/status"):
        page = client.get(url).content.decode()
        assert f"<th>{header}</th>" in page
        assert f'INBOX: 4 / 3 / 9 <span class="err">{quarantined}</span> <progress max="9" value="4">' in page
        assert "Sent: 0 / 0 / 0<br>" in page
    assert '<td class="health-syncing">' + {"en": "Syncing", "ru": "Синхронизация"}[lang] in page
    # Counts are grouped as the reader's language writes them.
    inbox.server_count = 20_000
    inbox.save(update_fields=["server_count"])
    grouped = {"en": "20,000", "ru": "20\xa0000"}[lang]
    assert f"INBOX: 4 / 3 / {grouped} " in client.get("/mailboxes/status").content.decode()
