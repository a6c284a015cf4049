"""`mailroom mailbox add` against real Dovecot: the login is tested before anything is stored."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.db.models.signals import post_save

from mailroom.accounts.models import Team
from mailroom.cli import main
from mailroom.mailboxes.models import Folder, Mailbox
from mailroom.testing.servers import free_port

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def saves() -> Iterator[list[str]]:
    """Every Mailbox row written (a running engine would see it at once), by address."""
    written: list[str] = []

    def record(sender: Any, instance: Mailbox, **kwargs: Any) -> None:
        written.append(instance.email)

    post_save.connect(record, sender=Mailbox, dispatch_uid="test-mailbox-saves")
    yield written
    post_save.disconnect(sender=Mailbox, dispatch_uid="test-mailbox-saves")


def _add(email: str, imap_port: int, password: str, *extra: str) -> list[str]:
    return ["mailbox", "add", email, "--team", "Newcomers", "--imap-host", "127.0.0.1", "--imap-port", str(imap_port),
            "--imap-security", "plain", f"--password={password}", *extra]


def _nothing_stored(saves: list[str]) -> None:
    assert saves == []
    assert (Mailbox.objects.count(), Folder.objects.count()) == (0, 0)
    assert not Team.objects.filter(name="Newcomers").exists()


def test_a_wrong_password_stores_nothing(mail_user: Any, capsys: Any, saves: list[str]) -> None:
    user = mail_user()
    port = user.dovecot.imap_port
    assert main(_add(user.email, port, "wrong-password")) == 1
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err == (f"mailroom: mailbox not added: IMAP: IMAP login to 127.0.0.1:{port} as '{user.email}' was "
                       "refused: b'[AUTHENTICATIONFAILED] Authentication failed.'. Check the user name and password "
                       "(Gmail, Yandex and Mail.ru need an app password or OAuth2, and IMAP access enabled in the "
                       "mailbox settings). (use --no-test to add it anyway)\n")
    _nothing_stored(saves)


def test_a_closed_port_stores_nothing(mail_user: Any, capsys: Any, saves: list[str]) -> None:
    user = mail_user()
    closed = free_port()
    assert main(_add(user.email, closed, user.password)) == 1
    assert capsys.readouterr().err == (
        f"mailroom: mailbox not added: IMAP: IMAP server 127.0.0.1:{closed} refused the connection: check the port "
        f"({closed}). (use --no-test to add it anyway)\n")
    _nothing_stored(saves)

    # The IMAP login works, the SMTP server given does not answer: not added either.
    smtp = ["--smtp-host", "127.0.0.1", "--smtp-port", str(closed), "--smtp-security", "plain"]
    assert main(_add(user.email, user.dovecot.imap_port, user.password, *smtp)) == 1
    assert capsys.readouterr().err == (
        f"mailroom: mailbox not added: SMTP: SMTP server 127.0.0.1:{closed} refused the connection: check the port "
        f"({closed}). (use --no-test to add it anyway)\n")
    _nothing_stored(saves)


def test_a_working_login_is_stored_once(mail_user: Any, capsys: Any, saves: list[str]) -> None:
    user = mail_user()
    assert main(_add(user.email, user.dovecot.imap_port, user.password)) == 0
    mb = Mailbox.objects.get()
    assert capsys.readouterr().out == f"mailbox {mb.pk} added: {user.email} (syncing inbox, sent)\n"
    assert saves == [user.email]
    assert mb.team.name == "Newcomers"
    assert (mb.imap_port, mb.get_secret()) == (user.dovecot.imap_port, {"password": user.password})
