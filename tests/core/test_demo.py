from __future__ import annotations

import smtplib
from pathlib import Path
from typing import Any

import pytest

from mailroom.core.demo import DEMO_EMAIL, sample_correspondence
from mailroom.parsing.mime import parse_message


def test_sample_correspondence_is_realistic_and_decodes() -> None:
    samples = list(sample_correspondence())
    assert len(samples) == 48
    assert {f for f, _ in samples} == {"INBOX", "Sent"}
    charsets = {b"koi8-r", b"windows-1251", b"utf-8"}
    assert all(any(c in raw for raw in (r for _, r in samples)) for c in charsets)
    parsed = [parse_message(raw) for _, raw in samples]
    assert all(p.errors == () for p in parsed)
    assert all(("Здравствуйте" in p.text or "Добрый день" in p.text or "Hello" in p.text or "Hi," in p.text) for p in parsed)
    sent = [p for (f, _), p in zip(samples, parsed, strict=True) if f == "Sent"]
    assert all(p.from_[0].address == DEMO_EMAIL for p in sent)


@pytest.mark.django_db(transaction=True)
def test_demo_falls_back_to_a_pure_python_imap_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without Dovecot, the demo runs pymap (from PyPI) and the sync imports the seeded mail from it."""
    from mailroom.conversations.models import Message, Source
    from mailroom.core.demo import demo_setup
    from mailroom.ingest.imap.worker import mailbox_sync_once
    from mailroom.mailboxes.models import Mailbox
    from mailroom.testing import servers

    def not_installed(self: Any, timeout: float = 10.0) -> Any:
        raise servers.ServersNotInstalled("dovecot is not installed")

    monkeypatch.setattr(servers.Dovecot, "start", not_installed)
    demo = demo_setup(tmp_path)
    try:
        samples = list(sample_correspondence())
        assert demo["seeded"] == len(samples) == 48
        mb = Mailbox.objects.get(email=DEMO_EMAIL)
        results = mailbox_sync_once(mb)
        assert {name: r.stored for name, r in results.items()} == {
            "INBOX": sum(f == "INBOX" for f, _ in samples), "Sent": sum(f == "Sent" for f, _ in samples)}
        assert Message.objects.count() == 48
        assert Source.objects.filter(folder__role="sent").count() == sum(f == "Sent" for f, _ in samples)
        # Mail sent to the demo mailbox through the demo's SMTP server arrives there.
        with smtplib.SMTP("127.0.0.1", int(demo["smtp_port"])) as smtp:  # type: ignore[call-overload]
            smtp.login(DEMO_EMAIL, str(demo["password"]))
            smtp.sendmail("ivan.petrov@romashka.test", [DEMO_EMAIL],
                          b"From: ivan.petrov@romashka.test\r\nSubject: new\r\nMessage-ID: <new@romashka.test>\r\n\r\nhi\r\n")
        assert {name: r.stored for name, r in mailbox_sync_once(mb).items()} == {"INBOX": 1, "Sent": 0}
    finally:
        demo["stop"]()  # type: ignore[operator]


def test_the_same_time_gives_the_same_sample_mail() -> None:
    from datetime import UTC, datetime

    at = datetime(2026, 3, 1, 9, 30, 15, 123456, tzinfo=UTC)
    assert list(sample_correspondence(at)) == list(sample_correspondence(at.replace(microsecond=0)))


@pytest.mark.django_db(transaction=True)
def test_restarting_the_pure_python_demo_does_not_seed_its_messages_twice(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """pymap keeps its mail in memory: every start seeds it again, and the sync (a new UIDVALIDITY)
    must recognise the same 48 messages, not store 48 more."""
    from mailroom.conversations.models import Message, Thread
    from mailroom.conversations.pipeline import drain
    from mailroom.core.demo import demo_setup
    from mailroom.ingest.imap.worker import mailbox_sync_once
    from mailroom.mailboxes.models import Mailbox
    from mailroom.testing import servers

    def not_installed(self: Any, timeout: float = 10.0) -> Any:
        raise servers.ServersNotInstalled("dovecot is not installed")

    monkeypatch.setattr(servers.Dovecot, "start", not_installed)
    counts = []
    for _ in range(2):
        demo = demo_setup(tmp_path)
        try:
            assert demo["seeded"] == 48
            results = mailbox_sync_once(Mailbox.objects.get(email=DEMO_EMAIL))
            assert sum(r.stored for r in results.values()) == 48  # every copy seen, as sources
            drain()
            counts.append((Message.objects.count(), Thread.objects.count(), Message.objects.filter(state="linked").count()))
        finally:
            demo["stop"]()  # type: ignore[operator]
    assert counts == [(48, 16, 48), (48, 16, 48)]
    assert Mailbox.objects.count() == 1


NO_DOVECOT = """
import sys
from mailroom.testing import servers

def not_installed(self, timeout=10.0):
    raise servers.ServersNotInstalled("dovecot is not installed")

servers.Dovecot.start = not_installed
from mailroom.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.e2e
@pytest.mark.parametrize("imap", ["dovecot", "pymap"])
def test_kill_minus_nine_of_the_demo_leaves_no_server_or_worker_behind(mail_servers_dir: Path, imap: str) -> None:
    """``mailroom demo`` runs a Dovecot (or, where it is not installed, pymap) and its SMTP sandbox: a
    ``kill -9`` of it takes every process it started with it."""
    import os
    import signal
    import subprocess
    import sys
    import tempfile

    tmp_path = Path(tempfile.mkdtemp(dir=mail_servers_dir))  # the servers' users must reach the run dir
    tmp_path.chmod(0o755)

    from mailroom.testing.servers import free_port
    from tests.procs import descendants, session_processes, wait_gone

    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "MAILROOM_ENCRYPTION_KEYS")}
    env["MAILROOM_DATA_DIR"] = str(tmp_path)
    with open(tmp_path / "stderr", "w") as err:
        start = ["-m", "mailroom.cli"] if imap == "dovecot" else ["-c", NO_DOVECOT]
        proc = subprocess.Popen([sys.executable, *start, "demo", "--port", str(free_port())], env=env,
                                stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True)
    started: dict[int, str] = {}
    try:
        lines = [proc.stdout.readline() for _ in range(4)]  # type: ignore[union-attr]
        assert lines[3].startswith(f"Demo mailbox {DEMO_EMAIL} "), (lines, (tmp_path / "stderr").read_text())
        started = {**descendants(proc.pid), **session_processes(proc.pid)}
        started.pop(proc.pid, None)
        assert any(imap in cmd for cmd in started.values()), started
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        assert wait_gone(started, 20) == {}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        wait_gone({**started, **session_processes(proc.pid)}, 0)
        proc.stdout.close()  # type: ignore[union-attr]
