"""An HTML nesting bomb is shown as text, never sanitised (nh3's tree building is quadratic in depth:
200,000 nested divs ran for minutes and held up all mail behind it)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from mailroom.conversations.models import Message, message_body
from mailroom.parsing.html import MAX_DEPTH, sanitize_html, too_deep
from mailroom.parsing.mime import parse_message
from tests.conversations.mail import ingest, raw_email
from tests.factories import MailboxFactory


def bomb(n: int = 200_000) -> bytes:
    html = "<html><body>" + "<div>" * n + "Привет, bomb" + "</div>" * n + "</body></html>"
    return (
        "From: x@evil.test\r\nTo: manager0@company.test\r\nSubject: deep\r\nMessage-ID: <bomb@evil.test>\r\n"
        "Date: Mon, 2 Mar 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        + html
    ).encode()


def test_depth_bound() -> None:
    assert too_deep("<div>" * (MAX_DEPTH + 1)) is True
    assert too_deep("<div>" * MAX_DEPTH) is False
    assert too_deep("<div></div>" * 10_000 + "<br>" * 10_000 + "<img src=x/>" * 1000) is False
    assert sanitize_html("<div>" * (MAX_DEPTH + 1) + "x").html == ""
    assert sanitize_html("<div>" * 10 + "<b>x</b>" + "</div>" * 10).html == "<div>" * 10 + "<b>x</b>" + "</div>" * 10


def test_bomb_parses_quickly_as_text_with_the_reason() -> None:
    start = time.monotonic()
    parsed = parse_message(bomb(), received_at=datetime(2026, 3, 2, tzinfo=UTC))
    elapsed = time.monotonic() - start
    assert elapsed < 10  # minutes before the bound; a generous ceiling, not a benchmark
    assert parsed.html_safe == ""
    assert parsed.text == "Привет, bomb\n"
    assert f"html_too_deep: more than {MAX_DEPTH} nested elements, shown as text" in parsed.errors


@pytest.mark.django_db
def test_mail_behind_a_bomb_flows(team: Any) -> None:
    mailbox = MailboxFactory(team=team, email="manager0@company.test")
    t0 = datetime(2026, 3, 2, 9, tzinfo=UTC)
    first, after = ingest(team, mailbox, bomb(), raw_email(mid="ok@client.test", frm="a@client.test", date=t0 + timedelta(minutes=5)))
    assert [m.state for m in Message.objects.filter(pk__in=[first.pk, after.pk]).order_by("id")] == ["linked", "linked"]
    assert message_body(first.pk).text == "Привет, bomb\n"
