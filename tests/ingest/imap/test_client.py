from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from mailroom.ingest.imap.client import Fetched, ImapSession, compress_uids, parse_fetch_response
from mailroom.mailboxes.connect import ConnectionSettings
from tests.ingest.helpers import make_mail


def test_compress_uids() -> None:
    assert compress_uids([9, 1, 2, 3, 7, 10]) == "1:3,7,9:10"
    assert compress_uids([5]) == "5"
    assert compress_uids([]) == ""


def test_parse_fetch_response_dovecot_and_gmail_shapes() -> None:
    data = [
        (b'1 (UID 5 INTERNALDATE "17-Jul-2026 02:44:25 -0700" BODY[] {5}', b"hello"),
        b")",
        # Gmail puts X-GM-THRID before the literal; another server sends UID after it.
        (b'2 (X-GM-THRID 1734127431262137463 UID 6 INTERNALDATE "01-Jan-2026 00:00:00 +0000" BODY[] {3}', b"abc"),
        b")",
        (b"3 (BODY[] {2}", b"xy"),
        b' UID 8 INTERNALDATE "02-Jan-2026 10:00:00 +0300")',
    ]
    assert list(parse_fetch_response(data)) == [
        Fetched(uid=5, raw=b"hello", internal_date=datetime(2026, 7, 17, 2, 44, 25, tzinfo=timezone(timedelta(hours=-7)))),
        Fetched(uid=6, raw=b"abc", internal_date=datetime(2026, 1, 1, tzinfo=UTC), gm_thread_id="1734127431262137463"),
        Fetched(uid=8, raw=b"xy", internal_date=datetime(2026, 1, 2, 10, tzinfo=timezone(timedelta(hours=3)))),
    ]


def _session(user: Any) -> ImapSession:
    return ImapSession.open(ConnectionSettings(host=user.dovecot.host, port=user.dovecot.imap_port, security="plain",
                                               username=user.email, auth="password", password=user.password))


def test_imaplib_trace_is_off_unless_its_logger_shows_it(mail_user: Any) -> None:
    """IMAPClient sets imaplib's debug level to 5, which formats the repr() of every FETCHed message
    even when nothing is logged (10x the cost of the fetch itself)."""
    user = mail_user()
    raw = make_mail(1)
    user.deliver(raw)
    session = _session(user)
    try:
        assert session.imap.debug == 0  # type: ignore[attr-defined]
        session.examine("INBOX")
        fetched = session.fetch([1])
        assert [f.uid for f in fetched] == [1]
        assert fetched[0].raw.replace(b"\r\n", b"\n").endswith(raw)
    finally:
        session.close()
    logger = logging.getLogger("imapclient.imaplib")
    previous = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        traced = _session(user)
        assert traced.imap.debug == 5  # type: ignore[attr-defined]
        traced.close()
    finally:
        logger.setLevel(previous)
