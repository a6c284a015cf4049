"""The private Dovecot/Postfix instances work for real (mailroom.testing.servers)."""

from __future__ import annotations

import imaplib
import os
import shutil
import smtplib
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, Envelope, Session

from mailroom.testing.servers import Dovecot, MailUser, Postfix, free_port

if "mailroom.testing.fixtures" not in sys.modules:
    # The root conftest normally registers them (pytest_plugins); this keeps the
    # module runnable on its own.
    from mailroom.testing.fixtures import dovecot, mail_servers_dir, mail_user, postfix  # noqa: F401

from mailroom.testing.fixtures import MailUserFactory

pytestmark = pytest.mark.e2e


def make_message(
    sender: str, to: str, subject: str = "hello", body: str = "Hi there.\n"
) -> tuple[bytes, str]:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg_id = make_msgid(domain="test.mailroom")
    msg["Message-ID"] = msg_id
    msg.set_content(body)
    return msg.as_bytes(), msg_id.strip("<>")


def small_messages(n: int, tag: str) -> Iterator[bytes]:
    for i in range(n):
        yield (
            f"From: sender{i % 17}@client.test\r\nTo: someone@company.test\r\n"
            f"Subject: message {i}\r\nMessage-ID: <{tag}-{i}@bulk.test>\r\n"
            f"Date: Mon, 01 Jan 2024 12:00:00 +0000\r\n\r\nBody of message {i}.\r\n"
        ).encode()


# --------------------------------------------------------------------------- IMAP


def _caps(conn: imaplib.IMAP4) -> set[str]:
    typ, data = conn.capability()
    assert typ == "OK"
    return set(data[0].decode().upper().split())


def test_imap_login_plain_starttls_and_imaps(dovecot: Dovecot, mail_user: MailUserFactory) -> None:
    user = mail_user()
    plain = imaplib.IMAP4(dovecot.host, dovecot.imap_port)
    assert "STARTTLS" in plain.capabilities
    plain.login(user.email, user.password)
    assert plain.select("INBOX")[0] == "OK"
    plain.logout()

    for tls in ("starttls", "implicit"):
        conn = user.imap(tls=tls)  # type: ignore[arg-type]
        assert conn.state == "AUTH"
        sock = conn.socket()
        assert hasattr(sock, "version") and sock.version() in {"TLSv1.2", "TLSv1.3"}
        conn.logout()


def test_imap_wrong_password_rejected(mail_user: MailUserFactory) -> None:
    user = mail_user()
    conn = imaplib.IMAP4(user.host, user.dovecot.imap_port)
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        conn.login(user.email, user.password + "x")
    conn.logout()


def test_capabilities_idle_condstore_qresync(mail_user: MailUserFactory) -> None:
    conn = mail_user().imap()
    caps = _caps(conn)
    assert {"IDLE", "CONDSTORE", "QRESYNC", "SPECIAL-USE", "UIDPLUS", "MOVE"} <= caps
    typ, _ = conn._simple_command("ENABLE", "QRESYNC")  # type: ignore[attr-defined]
    assert typ == "OK"
    conn.select("INBOX")
    typ, modseq = conn.response("HIGHESTMODSEQ")
    assert modseq and modseq[0] is not None
    conn.logout()


def test_special_use_folders_autocreated(mail_user: MailUserFactory) -> None:
    conn = mail_user().imap()
    typ, lines = conn.list()
    assert typ == "OK"
    listing = b"\n".join(line for line in lines if isinstance(line, bytes)).decode()
    for name, flag in [
        ("Sent", "\\Sent"),
        ("Drafts", "\\Drafts"),
        ("Trash", "\\Trash"),
        ("Junk", "\\Junk"),
        ("Archive", "\\Archive"),
    ]:
        assert any(flag in line and line.endswith(f'"/" {name}') for line in listing.splitlines()), listing
    # RFC 6154 LIST (SPECIAL-USE) returns exactly the special-use folders.
    typ, dat = conn._simple_command("LIST", "(SPECIAL-USE)", '""', '"*"')  # type: ignore[attr-defined]
    assert typ == "OK"
    _, special = conn._untagged_response(typ, dat, "LIST")  # type: ignore[attr-defined]
    names = {line.decode().rsplit(" ", 1)[1] for line in special}
    assert names == {"Sent", "Drafts", "Trash", "Junk", "Archive"}
    typ, lsub = conn.lsub()
    assert any(b"Sent" in line for line in lsub if isinstance(line, bytes))
    conn.logout()


def test_idle_sees_new_mail(mail_user: MailUserFactory) -> None:
    user = mail_user()
    conn = user.imap()
    conn.select("INBOX")
    tag = conn._new_tag().decode()  # type: ignore[attr-defined]
    conn.send(f"{tag} IDLE\r\n".encode())
    assert conn.readline().startswith(b"+")
    raw, _ = make_message("x@client.test", user.email)
    user.deliver(raw)
    conn.socket().settimeout(10)
    line = conn.readline()
    assert line.strip() == b"* 1 EXISTS", line
    conn.send(b"DONE\r\n")
    while not (line := conn.readline()).startswith(tag.encode()):
        pass
    assert b"OK" in line
    conn.logout()


# --------------------------------------------------------------------------- helpers


def test_deliver_count_fetch_expunge(dovecot: Dovecot, mail_user: MailUserFactory) -> None:
    user = mail_user()
    ids = []
    for i in range(3):
        raw, msg_id = make_message("x@client.test", user.email, subject=f"n{i}")
        user.deliver(raw)
        ids.append(msg_id)
    raw, sent_id = make_message(user.email, "x@client.test")
    user.deliver(raw, folder="Sent")
    user.deliver(raw, folder="Projects/2024")  # created on demand

    assert dovecot.count(user.email) == 3
    assert dovecot.count(user.email, "Sent") == 1
    assert dovecot.count(user.email, "Projects/2024") == 1
    assert "Projects/2024" in dovecot.folders(user.email)
    assert dovecot.list_uids(user.email) == [1, 2, 3]
    assert dovecot.fetch_message_ids(user.email) == {1: ids[0], 2: ids[1], 3: ids[2]}
    assert dovecot.fetch_message_ids(user.email, "Sent") == {1: sent_id}

    dovecot.expunge(user.email, "INBOX", [2])
    assert dovecot.list_uids(user.email) == [1, 3]
    conn = user.imap()
    _, data = conn.select("INBOX", readonly=True)
    assert data == [b"2"]
    conn.logout()


def test_deliver_many_2000(
    dovecot: Dovecot, mail_user: MailUserFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    user = mail_user()
    n = 2000
    start = time.perf_counter()
    assert user.deliver_many(small_messages(n, "bulk"), folder="Archive") == n
    elapsed = time.perf_counter() - start
    with capsys.disabled():
        print(f"\ndeliver_many: {n} messages in {elapsed:.2f}s = {n / elapsed:,.0f} msg/s")

    assert dovecot.count(user.email, "Archive") == n
    ids = dovecot.fetch_message_ids(user.email, "Archive")
    assert list(ids) == list(range(1, n + 1))
    # UIDs follow the order the messages were given in.
    assert list(ids.values()) == [f"bulk-{i}@bulk.test" for i in range(n)]
    conn = user.imap()
    _, data = conn.select("Archive", readonly=True)
    assert data == [str(n).encode()]
    _, fetched = conn.uid("FETCH", "1500", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    first = fetched[0]
    assert isinstance(first, tuple) and b"message 1499" in first[1]
    conn.logout()
    # A second batch appends after the first.
    user.deliver_many(small_messages(5, "more"), folder="Archive")
    assert dovecot.list_uids(user.email, "Archive")[-5:] == list(range(n + 1, n + 6))


@pytest.mark.parametrize("renumber", [True, False])
def test_reset_uidvalidity_keeps_messages(
    dovecot: Dovecot, mail_user: MailUserFactory, renumber: bool
) -> None:
    user = mail_user()
    user.deliver_many(small_messages(5, "uv"))
    dovecot.add_flags(user.email, "INBOX", [2], "\\Seen", "\\Flagged")
    before_ids = dovecot.fetch_message_ids(user.email)
    old = dovecot.uidvalidity(user.email)

    new = dovecot.reset_uidvalidity(user.email, "INBOX", renumber=renumber)

    assert new != old
    assert dovecot.uidvalidity(user.email) == new
    after_ids = dovecot.fetch_message_ids(user.email)
    assert list(after_ids.values()) == list(before_ids.values())
    if renumber:
        assert set(after_ids).isdisjoint(before_ids)
    else:
        assert after_ids == before_ids
    conn = user.imap()
    conn.select("INBOX", readonly=True)
    assert conn.response("UIDVALIDITY")[1] == [str(new).encode()]
    _, data = conn.search(None, "FLAGGED")
    assert data == [b"2"]
    conn.logout()


def test_add_user_while_running_and_password_change(dovecot: Dovecot) -> None:
    address = f"late-{os.getpid()}-{time.monotonic_ns()}@company.test"
    dovecot.add_user(address, "first")
    user = MailUser(address, "first", dovecot)
    user.imap().logout()
    dovecot.add_user(address, "second")
    with pytest.raises(imaplib.IMAP4.error):
        user.imap()
    MailUser(address, "second", dovecot).imap().logout()


# --------------------------------------------------------------------------- Postfix


def _submit(postfix: Postfix, user: MailUser, raw: bytes, to: str, *, starttls: bool = True) -> None:
    with smtplib.SMTP(postfix.host, postfix.submission_port, timeout=10) as smtp:
        if starttls:
            smtp.starttls(context=user.dovecot.ssl_context())
        smtp.login(user.email, user.password)
        smtp.sendmail(user.email, [to], raw)


def test_submission_delivers_to_dovecot(
    postfix: Postfix, dovecot: Dovecot, mail_user: MailUserFactory
) -> None:
    alice, bob = mail_user("company.test"), mail_user("client.test")
    raw, msg_id = make_message(alice.email, bob.email)
    mark = postfix.log_position()

    _submit(postfix, alice, raw, bob.email)

    status = postfix.wait_for_delivery(bob.email, since=mark)
    assert status.status == "sent", status.line
    assert dovecot.fetch_message_ids(bob.email) == {1: msg_id}
    # And without STARTTLS (AUTH over plain loopback is allowed).
    raw2, msg_id2 = make_message(alice.email, bob.email, subject="again")
    mark = postfix.log_position()
    _submit(postfix, alice, raw2, bob.email, starttls=False)
    assert postfix.wait_for_delivery(bob.email, since=mark).status == "sent"
    assert list(dovecot.fetch_message_ids(bob.email).values()) == [msg_id, msg_id2]


def test_submission_rejects_wrong_password_and_anonymous(
    postfix: Postfix, mail_user: MailUserFactory
) -> None:
    alice, bob = mail_user(), mail_user("client.test")
    with smtplib.SMTP(postfix.host, postfix.submission_port, timeout=10) as smtp:
        smtp.starttls(context=alice.dovecot.ssl_context())
        with pytest.raises(smtplib.SMTPAuthenticationError) as err:
            smtp.login(alice.email, "wrong-password")
        assert err.value.smtp_code == 535
    with smtplib.SMTP(postfix.host, postfix.submission_port, timeout=10) as smtp:
        smtp.mail(alice.email)
        code, _ = smtp.rcpt(bob.email)
        assert code == 554  # relay access denied without AUTH


def test_mx_port_accepts_local_domains_only(
    postfix: Postfix, dovecot: Dovecot, mail_user: MailUserFactory
) -> None:
    carol = mail_user()
    raw, msg_id = make_message("stranger@elsewhere.test", carol.email)
    mark = postfix.log_position()
    with smtplib.SMTP(postfix.host, postfix.smtp_port, timeout=10) as smtp:
        assert smtp.ehlo()[0] == 250
        assert smtp.has_extn("starttls") and not smtp.has_extn("auth")
        smtp.mail("stranger@elsewhere.test")
        assert smtp.rcpt("nobody-here@company.test")[0] == 550  # not a Dovecot user
        assert smtp.rcpt("someone@example.org")[0] == 554  # no open relay
        assert smtp.rcpt(carol.email)[0] == 250
        assert smtp.data(raw)[0] == 250
    assert postfix.wait_for_delivery(carol.email, since=mark).status == "sent"
    assert list(dovecot.fetch_message_ids(carol.email).values()) == [msg_id]


class _Sink:
    def __init__(self) -> None:
        self.received: list[tuple[str, list[str], bytes]] = []
        self.event = threading.Event()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        self.received.append((str(envelope.mail_from), list(envelope.rcpt_tos), content))
        self.event.set()
        return "250 2.0.0 Accepted by test sink"


class _LMTPController(Controller):
    def factory(self) -> SMTP:
        return LMTP(self.handler, **self.SMTP_kwargs)


def _start_sink(protocol: str, port: int) -> tuple[_Sink, Controller]:
    sink = _Sink()
    cls = _LMTPController if protocol == "lmtp" else Controller
    controller = cls(sink, hostname="127.0.0.1", port=port, ready_timeout=5)
    controller.start()
    return sink, controller


def _send_mx(postfix: Postfix, raw: bytes, sender: str, rcpt: str) -> None:
    with smtplib.SMTP(postfix.host, postfix.smtp_port, timeout=10) as smtp:
        smtp.sendmail(sender, [rcpt], raw)


@pytest.mark.parametrize("protocol", ["lmtp", "smtp"])
def test_relay_domain_goes_to_endpoint(postfix: Postfix, protocol: str) -> None:
    domain = f"{protocol}-relay.mailroom.test"
    port = free_port()
    sink, controller = _start_sink(protocol, port)
    try:
        postfix.relay(domain, port, protocol=protocol)  # type: ignore[arg-type]
        rcpt = f"support@{domain}"
        raw, msg_id = make_message("customer@client.test", rcpt)
        mark = postfix.log_position()
        _send_mx(postfix, raw, "customer@client.test", rcpt)
        status = postfix.wait_for_delivery(rcpt, since=mark)
        assert status.status == "sent", status.line
        assert status.relay.endswith(f":{port}")
        assert sink.event.wait(5)
        sender, rcpts, content = sink.received[0]
        assert (sender, rcpts) == ("customer@client.test", [rcpt])
        assert msg_id.encode() in content
    finally:
        controller.stop()


def test_relay_outage_then_flush(postfix: Postfix) -> None:
    domain = "outage-relay.mailroom.test"
    port = free_port()  # nothing listens yet
    postfix.relay(domain, port, protocol="lmtp")
    rcpt = f"inbound@{domain}"
    raw, msg_id = make_message("customer@client.test", rcpt)
    mark = postfix.log_position()
    _send_mx(postfix, raw, "customer@client.test", rcpt)
    deferred = postfix.wait_for_delivery(rcpt, since=mark, statuses=("deferred",))
    assert "refused" in deferred.line or "connect" in deferred.line
    (queued,) = postfix.wait_for_queue("deferred")
    assert queued["recipients"][0]["address"] == rcpt  # type: ignore[index]

    sink, controller = _start_sink("lmtp", port)
    try:
        mark = postfix.log_position()
        postfix.flush()
        assert postfix.wait_for_delivery(rcpt, since=mark).status == "sent"
        assert sink.event.wait(5)
        assert msg_id.encode() in sink.received[0][2]
        postfix.wait_for_empty_queue()
    finally:
        controller.stop()


def test_reject_gives_550_at_rcpt(postfix: Postfix, mail_user: MailUserFactory) -> None:
    dave = mail_user()
    postfix.reject(dave.email)
    try:
        for port in (postfix.smtp_port, postfix.submission_port):
            with smtplib.SMTP(postfix.host, port, timeout=10) as smtp:
                if port == postfix.submission_port:
                    sender = mail_user()
                    smtp.login(sender.email, sender.password)
                smtp.mail("someone@client.test")
                code, text = smtp.rcpt(dave.email)
                assert code == 550, text
                assert b"test outage" in text
        postfix.reject("client.test", code=451, text="4.3.0 Try again later")
        with smtplib.SMTP(postfix.host, postfix.smtp_port, timeout=10) as smtp:
            smtp.mail("x@elsewhere.test")
            assert smtp.rcpt("anyone@client.test")[0] == 451
    finally:
        postfix.unreject(dave.email)
        postfix.unreject("client.test")
    with smtplib.SMTP(postfix.host, postfix.smtp_port, timeout=10) as smtp:
        smtp.mail("someone@client.test")
        assert smtp.rcpt(dave.email)[0] == 250


# --------------------------------------------------------------------------- lifecycle


def _alive(pid: int) -> bool:
    """Running (zombies awaiting reaping by init don't count)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def test_second_instance_starts_fast_and_stops_cleanly(capsys: pytest.CaptureFixture[str]) -> None:
    """A separate pair in its own dir/ports (coexists with the session one)."""
    run_dir = Path(tempfile.mkdtemp(prefix="mailroom-servers-extra-"))
    run_dir.chmod(0o755)
    dc = Dovecot(run_dir)
    pf = Postfix(run_dir, dc)
    try:
        t0 = time.perf_counter()
        dc.start()
        t1 = time.perf_counter()
        pf.start()
        t2 = time.perf_counter()
        with capsys.disabled():
            print(f"\nstart-up: Dovecot {t1 - t0:.2f}s, Postfix {t2 - t1:.2f}s, both {t2 - t0:.2f}s")
        assert t2 - t0 < 3.0
        user = dc.new_user()
        with smtplib.SMTP(pf.host, pf.smtp_port, timeout=10) as smtp:
            smtp.sendmail("a@client.test", [user.email], make_message("a@client.test", user.email)[0])
        pf.wait_for_delivery(user.email)
        assert user.count() == 1
        pids = [p for p in (dc.pid, pf.pid) if p]
        children = _process_group_members(pids)
        assert children
    finally:
        pf.stop()
        dc.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
    deadline = time.monotonic() + 3
    while (left := [pid for pid in children if _alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in left]
    for port in (dc.imap_port, pf.smtp_port):
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0


def _process_group_members(pgids: list[int]) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.getpgid(int(entry)) in pgids:
                members.append(int(entry))
        except (ProcessLookupError, PermissionError):
            continue
    return members
