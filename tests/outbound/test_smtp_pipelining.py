"""The pipelined submission path (RFC 2920) gives the same outcomes as smtplib's sendmail path."""

from __future__ import annotations

from typing import Any

import pytest

from mailroom.outbound.smtp import SmtpSettings, Submitter

MSG = (b"From: a@company.test\r\nTo: b@client.test\r\nSubject: s\r\nMessage-ID: <p1@company.test>\r\n\r\n"
       b".starts with a dot\r\nmiddle\r\n.\r\n..two\r\nend")


@pytest.fixture(params=[True, False], ids=["pipelining", "sendmail"])
def sink(request: pytest.FixtureRequest, smtp_sink: Any) -> Any:
    smtp_sink.handler.pipelining = request.param
    return smtp_sink


def _sub(sink: Any) -> Submitter:
    return Submitter(SmtpSettings(host=sink.host, port=sink.port, security="plain", timeout=10))


def test_body_is_dot_stuffed_and_arrives_intact(sink: Any) -> None:
    with _sub(sink) as sub:
        res = sub.send("a@company.test", ["b@client.test", "c@client.test"], MSG)
        assert (res.outcome, res.code, res.text, res.kind, res.refused) == ("sent", 250, "accepted", "", {})
        assert sub.send("a@company.test", ["b@client.test"], MSG).outcome == "sent"
        assert sub.connections_opened == 1
        assert sub._smtp is not None and sub._smtp.has_extn("pipelining") == sink.handler.pipelining
    [first, second] = sink.messages
    assert first.data == MSG + b"\r\n" and first.rcpt_tos == ["b@client.test", "c@client.test"]
    assert second.data == first.data


def test_refused_recipients_partial_all_and_temporary(sink: Any) -> None:
    sink.handler.reject_rcpt = {"gone@client.test": "550 5.1.1 no such user", "full@client.test": "452 4.2.2 full"}
    with _sub(sink) as sub:
        partial = sub.send("a@company.test", ["b@client.test", "gone@client.test"], MSG)
        assert (partial.outcome, partial.kind) == ("sent", "partial")
        assert partial.refused == {"gone@client.test": (550, "5.1.1 no such user")}
        every = sub.send("a@company.test", ["gone@client.test"], MSG)
        assert (every.outcome, every.code, every.kind) == ("failed", 550, "rcpt_rejected")
        temp = sub.send("a@company.test", ["full@client.test", "gone@client.test"], MSG)
        assert (temp.outcome, temp.code, temp.kind) == ("retry", 452, "temporary")
        after = sub.send("a@company.test", ["b@client.test"], MSG)  # the connection is still usable
        assert after.outcome == "sent" and sub.connections_opened == 1
    assert [m.rcpt_tos for m in sink.messages] == [["b@client.test"], ["b@client.test"]]


def test_data_refused_is_classified_by_its_code(sink: Any) -> None:
    sink.handler.data_reply = "451 4.3.0 try later"
    with _sub(sink) as sub:
        res = sub.send("a@company.test", ["b@client.test"], MSG)
    assert (res.outcome, res.code, res.text, res.kind) == ("retry", 451, "4.3.0 try later", "data_rejected")
    sink.handler.data_reply = "554 5.7.1 spam"
    with _sub(sink) as sub:
        res = sub.send("a@company.test", ["b@client.test"], MSG)
    assert (res.outcome, res.code, res.kind) == ("failed", 554, "data_rejected")
    assert sink.messages == []
