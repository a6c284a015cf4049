"""The home page in headless Chromium: log in, see the mailboxes, watch import progress refresh."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection

from mailroom.mailboxes.models import Folder
from tests.factories import FolderFactory, MailboxFactory, UserFactory

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost",
]


def test_login_and_live_sync_progress(live_server: Any, team: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the ORM calls below are plain sync code.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

    UserFactory(username="olga", team=team)
    mb = MailboxFactory(team=team, email="sales@company.test", health="syncing")
    folder = FolderFactory(mailbox=mb, server_count=200, stored_count=50, backfill_done=False)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page()
            outside: list[str] = []
            page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(live_server.url) else None)
            page.goto(f"{live_server.url}/")
            page.fill("#id_username", "olga")
            page.fill("#id_password", "pass-word-1")
            page.click("input[type=submit]")
            page.wait_for_url(f"{live_server.url}/")
            assert page.inner_text("#mailboxes").count("sales@company.test") == 1
            assert "INBOX: 50 / 0 / 200" in page.inner_text("#mailboxes")
            page.screenshot(path=str(tmp_path / "home-importing.png"), full_page=True)
            Folder.objects.filter(pk=folder.pk).update(stored_count=200, backfill_done=True)
            # That ran inside Playwright's event loop, whose context gets a database connection of its
            # own; left open, it keeps PostgreSQL from dropping the test database at the end.
            connection.close()
            page.wait_for_function("document.querySelector('#mailboxes').innerText.includes('INBOX: 200 / 0 / 200')", timeout=10_000)
            assert page.locator("#mailboxes progress").count() == 0
            assert outside == []
        finally:
            browser.close()


@pytest.mark.parametrize(("locale", "label"), [("en-US", "held for review: sender not verified"),
                                               ("ru-RU", "на проверке: отправитель не подтверждён")])
def test_recent_mail_marks_unverified_senders(
    live_server: Any, team: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Any, locale: str, label: str
) -> None:
    from playwright.sync_api import sync_playwright

    from tests.factories import MessageFactory

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    UserFactory(username="olga", team=team)
    MessageFactory(team=team, subject="Re: Счёт 7781", from_address="anna@acme.test", from_name="Anna",
                   routing={"thread": {"flags": ["unverified"], "rules": []}})
    MessageFactory(team=team, subject="Order", from_address="greg@globex.test", from_name="Greg")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page(locale=locale)
            page.goto(f"{live_server.url}/")
            page.fill("#id_username", "olga")
            page.fill("#id_password", "pass-word-1")
            page.click("input[type=submit]")
            page.wait_for_url(f"{live_server.url}/")
            rows = page.locator("#recent tr")
            texts = {rows.nth(i).inner_text() for i in range(rows.count())}
            assert any("Re: Счёт 7781" in t and f"⚠ {label}" in t for t in texts), texts
            assert any("Order" in t and "⚠" not in t for t in texts), texts
            page.screenshot(path=str(tmp_path / f"home-{locale}.png"), full_page=True)
        finally:
            connection.close()
            browser.close()
