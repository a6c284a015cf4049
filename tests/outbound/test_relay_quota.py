"""Quotas of the relay endpoint (per relay token and per team, in the database, counted in accepted
messages) and the cap on refused recipients per SMTP session, through the real aiosmtpd server."""

from __future__ import annotations

import contextlib
import smtplib
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.db.models import F

from mailroom.conversations.models import Message, Source
from mailroom.ingest.lmtp.server import RelayController, start_relay_server
from mailroom.outbound.models import RelayHold, RelayQuotaWindow
from mailroom.outbound.relay import relay_address
from mailroom.outbound.relay_quota import quota_window_start
from tests.factories import MailboxFactory, TeamFactory, UserFactory
from tests.outbound.conftest import free_port
from tests.outbound.relay_mail import RELAY, reply_mail, sent_offer

TOKEN_FULL = "451 4.7.1 this relay address has reached its quota of messages for now, try again later"
TEAM_FULL = "451 4.7.1 the relay quota of this address's team is used up for now, try again later"
CLOSED = "421 4.7.0 too many unknown relay addresses in this session, closing connection"
UNKNOWN = "550 5.1.1 unknown or revoked relay address"


@contextlib.contextmanager
def relay_server(*, lmtp: bool = False) -> Iterator[int]:
    port = free_port()
    controller: RelayController = start_relay_server(host="127.0.0.1", port=port, lmtp=lmtp)
    try:
        yield port
    finally:
        controller.stop()


def _reply(code: int, text: bytes) -> str:
    return f"{code} {text.decode()}"


def deliver(port: int, addr: str, mid: str, *, sender: str = "client@client.test", lmtp: bool = False) -> str:
    """One message over SMTP (or LMTP); the reply line that decided it (RCPT's refusal or DATA's answer)."""
    with smtplib.LMTP("127.0.0.1", port, timeout=10) if lmtp else smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.ehlo_or_helo_if_needed()
        assert smtp.docmd(f"MAIL FROM:<{sender}>")[0] == 250
        code, text = smtp.docmd(f"RCPT TO:<{addr}>")
        if code != 250:
            return _reply(code, text)
        assert smtp.docmd("DATA")[0] == 354
        smtp.send(reply_mail(addr, sender=sender, mid=mid).replace(b"\r\n.", b"\r\n..") + b".\r\n")
        return _reply(*smtp.getreply())


def counts() -> dict[tuple[str, int], int]:
    start = quota_window_start()
    return {(r.scope, r.scope_id): r.accepted for r in RelayQuotaWindow.objects.filter(window_start=start)}


def next_window() -> None:
    """The window passes: the counted rows now belong to the previous one."""
    RelayQuotaWindow.objects.update(window_start=F("window_start") - timedelta(hours=1))


def forged(token: str, i: int) -> str:
    return f"reply+{token[:-4]}{i:04d}@{RELAY}"


@pytest.mark.django_db(transaction=True)
def test_token_quota_answers_451_until_a_later_window(relay_on: None, settings: Any, sink_mailbox: Any,
                                                      user: Any) -> None:
    settings.MAILROOM_RELAY_QUOTA_PER_TOKEN = 2
    token = sent_offer(user, sink_mailbox).relay_token
    assert token is not None
    addr = relay_address(token.token)
    with relay_server() as port:
        assert deliver(port, addr, "r1@client.test") == "250 2.0.0 OK"
        # A redelivery of the same message (an MTA retry) is no new message: not counted again.
        assert deliver(port, addr, "r1@client.test") == "250 2.0.0 OK"
        assert counts() == {("token", token.pk): 1, ("team", token.team_id): 1}
        # Held mail is accepted (and kept) too: it counts.
        assert deliver(port, addr, "s1@evil.test", sender="stranger@evil.test") == "250 2.0.0 OK"
        assert counts() == {("token", token.pk): 2, ("team", token.team_id): 2}
        assert deliver(port, addr, "r2@client.test") == TOKEN_FULL
        assert not Message.objects.filter(message_id="r2@client.test").exists()
        assert counts() == {("token", token.pk): 2, ("team", token.team_id): 2}
        next_window()
        assert deliver(port, addr, "r2@client.test") == "250 2.0.0 OK"
    assert Message.objects.filter(message_id="r2@client.test", sources__kind="lmtp").exists()
    assert RelayHold.objects.get().mail_from == "stranger@evil.test"
    assert counts() == {("token", token.pk): 1, ("team", token.team_id): 1}
    # The previous window is kept, older ones are pruned on write.
    assert RelayQuotaWindow.objects.count() == 4


@pytest.mark.django_db(transaction=True)
def test_team_quota_spans_its_tokens_not_other_teams(relay_on: None, settings: Any, sink_mailbox: Any,
                                                    smtp_sink: Any, user: Any) -> None:
    settings.MAILROOM_RELAY_QUOTA_PER_TEAM = 3
    a = relay_address(sent_offer(user, sink_mailbox).relay_token.token)  # type: ignore[union-attr]
    b = relay_address(sent_offer(user, sink_mailbox).relay_token.token)  # type: ignore[union-attr]
    other_team: Any = TeamFactory()
    other_box = MailboxFactory(team=other_team, email="sales@other.test", smtp_host=smtp_sink.host,
                               smtp_port=smtp_sink.port, provider_saves_sent=True)
    c = relay_address(sent_offer(UserFactory(team=other_team), other_box).relay_token.token)  # type: ignore[union-attr]
    with relay_server() as port:
        assert deliver(port, a, "a1@client.test") == "250 2.0.0 OK"
        assert deliver(port, a, "a2@client.test") == "250 2.0.0 OK"
        assert deliver(port, b, "b1@client.test") == "250 2.0.0 OK"
        assert deliver(port, b, "b2@client.test") == TEAM_FULL
        assert deliver(port, a, "a3@client.test") == TEAM_FULL
        assert deliver(port, c, "c1@client.test") == "250 2.0.0 OK"
    assert sorted(Message.objects.values_list("message_id", flat=True)) == [
        "a1@client.test", "a2@client.test", "b1@client.test", "c1@client.test"]
    assert counts()[("team", sink_mailbox.team_id)] == 3
    assert counts()[("team", other_team.pk)] == 1


@pytest.mark.django_db(transaction=True)
def test_quota_used_up_between_rcpt_and_data_is_451_and_nothing_half_kept(
        relay_on: None, settings: Any, sink_mailbox: Any, user: Any) -> None:
    settings.MAILROOM_RELAY_QUOTA_PER_TEAM = 1
    a = relay_address(sent_offer(user, sink_mailbox).relay_token.token)  # type: ignore[union-attr]
    b = relay_address(sent_offer(user, sink_mailbox).relay_token.token)  # type: ignore[union-attr]
    raw = reply_mail(a, mid="both@client.test")
    with relay_server(lmtp=True) as port, smtplib.LMTP("127.0.0.1", port, timeout=10) as lmtp:
        lmtp.ehlo_or_helo_if_needed()
        assert lmtp.docmd("MAIL FROM:<client@client.test>")[0] == 250
        assert lmtp.docmd(f"RCPT TO:<{a}>")[0] == 250
        assert lmtp.docmd(f"RCPT TO:<{b}>")[0] == 250  # one left at RCPT time, for both
        lmtp.putcmd("DATA")
        assert lmtp.getreply()[0] == 354
        lmtp.send(raw + b".\r\n")
        assert _reply(*lmtp.getreply()) == "250 2.0.0 stored"
        assert _reply(*lmtp.getreply()) == TEAM_FULL
    assert [key.split(":")[1] for key in Source.objects.values_list("key", flat=True)] == [a]
    assert counts()[("team", sink_mailbox.team_id)] == 1


@pytest.mark.django_db(transaction=True)
def test_forged_rcpts_do_not_lock_out_the_client(relay_on: None, sink_mailbox: Any, user: Any) -> None:
    token = sent_offer(user, sink_mailbox).relay_token
    assert token is not None
    addr = relay_address(token.token)
    with relay_server() as port:
        # The attacker names the client as sender and the real address 30 times, sends nothing.
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
            smtp.ehlo()
            assert smtp.docmd("MAIL FROM:<client@client.test>")[0] == 250
            for _ in range(30):
                assert smtp.docmd(f"RCPT TO:<{addr}>")[0] == 250
            assert smtp.docmd("RSET")[0] == 250
        # ... and 30 forged addresses next to it, over several sessions.
        for session in range(3):
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
                smtp.ehlo()
                assert smtp.docmd("MAIL FROM:<client@client.test>")[0] == 250
                for i in range(10):
                    assert _reply(*smtp.docmd(f"RCPT TO:<{forged(token.token, session * 10 + i)}>")) == UNKNOWN
        assert RelayQuotaWindow.objects.count() == 0  # nothing accepted, nothing counted
        assert deliver(port, addr, "genuine@client.test") == "250 2.0.0 OK"
    assert Message.objects.filter(message_id="genuine@client.test", sources__kind="lmtp").exists()


@pytest.mark.parametrize("lmtp", [False, True])
@pytest.mark.django_db(transaction=True)
def test_eleventh_refused_rcpt_of_a_session_closes_it_with_421(relay_on: None, sink_mailbox: Any, user: Any,
                                                               lmtp: bool) -> None:
    token = sent_offer(user, sink_mailbox).relay_token
    assert token is not None
    addr = relay_address(token.token)
    with relay_server(lmtp=lmtp) as port:
        client = smtplib.LMTP("127.0.0.1", port, timeout=10) if lmtp else smtplib.SMTP("127.0.0.1", port, timeout=10)
        try:
            client.ehlo_or_helo_if_needed()
            assert client.docmd("MAIL FROM:<prober@evil.test>")[0] == 250
            for i in range(5):
                assert _reply(*client.docmd(f"RCPT TO:<{forged(token.token, i)}>")) == UNKNOWN
            assert client.docmd(f"RCPT TO:<{addr}>")[0] == 250  # a valid one resets nothing
            # The count is the session's, across transactions.
            assert client.docmd("RSET")[0] == 250
            assert client.docmd("MAIL FROM:<prober@evil.test>")[0] == 250
            for i in range(5, 10):
                assert _reply(*client.docmd(f"RCPT TO:<{forged(token.token, i)}>")) == UNKNOWN
            assert _reply(*client.docmd(f"RCPT TO:<{forged(token.token, 10)}>")) == CLOSED
            with pytest.raises(smtplib.SMTPServerDisconnected):
                client.docmd(f"RCPT TO:<{addr}>")
        finally:
            client.close()
        # A new session starts afresh, and the address itself was never held against anybody.
        ok = "250 2.0.0 stored" if lmtp else "250 2.0.0 OK"
        assert deliver(port, addr, "after@client.test", lmtp=lmtp) == ok


@pytest.mark.django_db(transaction=True)
def test_quota_counters_outlive_the_server(relay_on: None, settings: Any, sink_mailbox: Any, user: Any) -> None:
    settings.MAILROOM_RELAY_QUOTA_PER_TOKEN = 2
    token = sent_offer(user, sink_mailbox).relay_token
    assert token is not None
    addr = relay_address(token.token)
    with relay_server() as port:
        assert deliver(port, addr, "p1@client.test") == "250 2.0.0 OK"
        assert deliver(port, addr, "p2@client.test") == "250 2.0.0 OK"
    with relay_server(lmtp=True) as port, smtplib.LMTP("127.0.0.1", port, timeout=10) as lmtp:
        lmtp.ehlo_or_helo_if_needed()
        assert lmtp.docmd("MAIL FROM:<client@client.test>")[0] == 250
        assert _reply(*lmtp.docmd(f"RCPT TO:<{addr}>")) == TOKEN_FULL
    assert RelayQuotaWindow.objects.get(scope="token", scope_id=token.pk).accepted == 2


@pytest.mark.django_db(transaction=True)
def test_old_windows_are_pruned_on_write(relay_on: None, sink_mailbox: Any, user: Any) -> None:
    token = sent_offer(user, sink_mailbox).relay_token
    assert token is not None
    now = quota_window_start()
    for back in (1, 2, 30):
        RelayQuotaWindow.objects.create(scope="team", scope_id=token.team_id, window_start=now - timedelta(hours=back),
                                        accepted=5)
    RelayQuotaWindow.objects.create(scope="token", scope_id=999_999, window_start=now - timedelta(hours=3), accepted=1)
    with relay_server() as port:
        assert deliver(port, relay_address(token.token), "x1@client.test") == "250 2.0.0 OK"
    left = sorted((r.scope, r.scope_id, now - r.window_start) for r in RelayQuotaWindow.objects.all())
    assert left == [("team", token.team_id, timedelta(0)), ("team", token.team_id, timedelta(hours=1)),
                    ("token", token.pk, timedelta(0))]


@pytest.mark.django_db(transaction=True)
def test_concurrent_deliveries_never_exceed_the_quota(relay_on: None, settings: Any, sink_mailbox: Any,
                                                      user: Any) -> None:
    settings.MAILROOM_RELAY_QUOTA_PER_TOKEN = 3
    token = sent_offer(user, sink_mailbox).relay_token
    assert token is not None
    addr = relay_address(token.token)
    clients = 6
    ready = threading.Barrier(clients)
    replies: list[str] = []

    def one(i: int) -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
            smtp.ehlo()
            assert smtp.docmd("MAIL FROM:<client@client.test>")[0] == 250
            assert smtp.docmd(f"RCPT TO:<{addr}>")[0] == 250  # nothing counted yet: all pass RCPT
            ready.wait(timeout=30)
            assert smtp.docmd("DATA")[0] == 354
            smtp.send(reply_mail(addr, mid=f"c{i}@client.test") + b".\r\n")
            replies.append(_reply(*smtp.getreply()))

    with relay_server() as port:
        threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    assert sorted(replies) == ["250 2.0.0 OK"] * 3 + [TOKEN_FULL] * 3
    assert Message.objects.filter(sources__kind="lmtp").count() == 3
    assert counts() == {("token", token.pk): 3, ("team", token.team_id): 3}


@pytest.mark.django_db(transaction=True)
def test_recipients_of_one_message_are_capped_with_452(relay_on: None, sink_mailbox: Any, user: Any) -> None:
    from mailroom.ingest.lmtp.server import MAX_RCPTS_PER_MESSAGE

    token = sent_offer(user, sink_mailbox).relay_token
    assert token is not None
    addr = relay_address(token.token)
    with relay_server() as port, smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.ehlo()
        assert smtp.docmd("MAIL FROM:<client@client.test>")[0] == 250
        for _ in range(MAX_RCPTS_PER_MESSAGE):
            assert smtp.docmd(f"RCPT TO:<{addr}>")[0] == 250
        assert _reply(*smtp.docmd(f"RCPT TO:<{addr}>")) == (
            "452 4.5.3 too many recipients for one message, send the others separately")
        assert smtp.docmd("DATA")[0] == 354
        smtp.send(reply_mail(addr, mid="many@client.test") + b".\r\n")
        assert _reply(*smtp.getreply()) == "250 2.0.0 OK"
    assert Source.objects.filter(message__message_id="many@client.test").count() == 1
    assert counts() == {("token", token.pk): 1, ("team", token.team_id): 1}
