from __future__ import annotations

import json

import pytest

from mailroom.parsing.autoreply import classify_auto_reply
from mailroom.parsing.mime import parse_message

from .helpers import CORPORA, message, report


def _wrap(body: str, subject: str = "Re: your question") -> bytes:
    return message(
        f"From: Alice <alice@example.com>\nTo: bob@example.org\nSubject: {subject}\nMessage-ID: <x@example.com>\nContent-Type: text/plain; charset=utf-8",
        body,
    )


def test_recall_on_rfc3834_samples() -> None:
    files = sorted((CORPORA / "sisimai-set-of-emails" / "maildir" / "bsd").glob("rfc3834-*.eml"))
    ok = 0
    for f in files:
        p = parse_message(f.read_bytes())
        ok += int(p.is_auto_reply and not p.bounce.is_bounce)
    assert report("auto-reply recall (sisimai rfc3834)", ok, len(files)) >= 0.95


def test_precision_no_human_reply_called_automatic() -> None:
    base = CORPORA / "email-reply-parser-fixtures"
    total = flagged = 0
    for c in json.loads((base / "expected.json").read_text()):
        body = (base / c["file"]).read_text(encoding="utf-8")
        for subject in ("Re: your question", "Out of office next week?", "Vacation plans"):
            total += 1
            flagged += int(parse_message(_wrap(body, subject)).is_auto_reply)
    for f in sorted((CORPORA / "imap-tools" / "messages").rglob("*.eml")):
        p = parse_message(f.read_bytes())
        if p.bounce.is_bounce or p.bounce.is_complaint:
            continue
        total += 1
        flagged += int(p.is_auto_reply)
    assert report("auto-reply precision", total - flagged, total) == 1.0


@pytest.mark.parametrize(
    ("headers", "subject", "body", "reason"),
    [
        ({"auto-submitted": "auto-replied"}, "Re: hi", "", "header:auto-submitted=auto-replied"),
        ({"auto-submitted": "auto-generated"}, "Notice", "", "header:auto-submitted=auto-generated"),
        ({"x-autoreply": "yes"}, "Re: hi", "", "header:x-autoreply"),
        ({"x-autorespond": "1"}, "Re: hi", "", "header:x-autorespond"),
        ({"precedence": "auto_reply"}, "Re: hi", "", "header:precedence=auto_reply"),
        ({}, "Automatic reply: Договор", "", "subject"),
        ({}, "Автоответ: Re: Счёт", "", "subject"),
        ({}, "Автоматический ответ: Договор", "", "subject"),
        ({}, "Out of Office AutoReply: Meeting", "", "subject"),
        (
            {},
            "Out of office",
            "I am out of the office until Monday with limited access to email.",
            "subject+body",
        ),
        ({}, "Отпуск", "Я в отпуске до 15 июня, вернусь 16.06.", "subject+body"),
    ],
)
def test_rules(headers: dict[str, str], subject: str, body: str, reason: str) -> None:
    v = classify_auto_reply(headers, subject, "x@example.com", body)
    assert (v.is_auto_reply, v.reason) == (True, reason)


@pytest.mark.parametrize(
    ("headers", "subject", "body"),
    [
        ({"auto-submitted": "no"}, "Re: hi", ""),
        ({}, "Re: Out of office next week", "I will be out of the office next week, let's meet before."),
        ({}, "Out of office", "Can we talk about the contract?"),
        ({"x-auto-response-suppress": "All"}, "Meeting", "Agenda attached."),
        ({"precedence": "bulk"}, "Newsletter", ""),
    ],
)
def test_not_auto_reply(headers: dict[str, str], subject: str, body: str) -> None:
    assert not classify_auto_reply(headers, subject, "x@example.com", body).is_auto_reply


def test_bulk() -> None:
    assert (
        classify_auto_reply({"list-unsubscribe": "<mailto:u@x>"}, "News").bulk_reason
        == "header:list-unsubscribe"
    )
    assert classify_auto_reply({"precedence": "bulk"}, "News").bulk_reason == "header:precedence=bulk"
    assert not classify_auto_reply({}, "Hello").is_bulk
