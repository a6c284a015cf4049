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
