"""Building realistic test mail and mailboxes pointed at the test Dovecot."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Any

from tests.factories import MailboxFactory


def make_mail(
    n: int,
    *,
    sender: str = "client@client.test",
    to: str = "manager@company.test",
    subject: str | None = None,
    in_reply_to: str | None = None,
    msgid: str | None = None,
    body: str | None = None,
    charset: str = "utf-8",
) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"Client {n} <{sender}>"
    msg["To"] = to
    msg["Subject"] = subject if subject is not None else f"Тема письма {n} / subject {n}"
    msg["Date"] = format_datetime(datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=n))
    msg["Message-ID"] = f"<{msgid}>" if msgid else make_msgid(idstring=f"t{n}", domain="client.test")
    if in_reply_to:
        msg["In-Reply-To"] = f"<{in_reply_to}>"
        msg["References"] = f"<{in_reply_to}>"
    msg.set_content(body if body is not None else f"Здравствуйте! Message number {n}.\n", charset=charset)
    return msg.as_bytes()


def mailbox_for(user: Any, **kwargs: Any) -> Any:
    """A Mailbox row connected to the test Dovecot for a MailUser."""
    return MailboxFactory(
        email=user.email,
        imap_host=user.dovecot.host,
        imap_port=user.dovecot.imap_port,
        imap_security="plain",
        imap_username=user.email,
        smtp_host=user.dovecot.host,
        password=user.password,
        **kwargs,
    )
