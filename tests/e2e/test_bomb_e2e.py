"""A real HTML nesting bomb through the real pipeline: synced from Dovecot over IMAP, parsed in the
parse workers under the hard deadline, shown as text; the mail behind it is linked in the same run
(before the depth bound, 200,000 nested divs kept the sanitiser busy for minutes)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from tests.conversations.mail import raw_email
from tests.ingest.helpers import mailbox_for
from tests.parsing.test_html_bomb import bomb

from mailroom.conversations.models import Message, message_body
from mailroom.conversations.pipeline import drain
from mailroom.ingest.imap.worker import mailbox_sync_once
from mailroom.parsing.html import MAX_DEPTH

pytestmark = [pytest.mark.django_db, pytest.mark.e2e]


def test_mail_behind_a_bomb_synced_over_imap_flows(mail_user: Any, settings: Any, team: Any) -> None:
    settings.MAILROOM_PARSE_PROCESSES = 1
    user = mail_user()
    mailbox = mailbox_for(user, team=team)
    t0 = datetime(2026, 3, 2, 9, tzinfo=UTC)
    user.deliver(bomb())
    for i in range(3):
        user.deliver(raw_email(mid=f"after{i}@client.test", frm="Anna <anna@client.test>", to=mailbox.email,
                               subject=f"Order {i}", date=t0 + timedelta(minutes=i + 1)))
    start = time.monotonic()
    mailbox_sync_once(mailbox)
    drain()
    elapsed = time.monotonic() - start
    states = dict(Message.objects.filter(team=team).values_list("message_id", "state"))
    assert states == {"bomb@evil.test": "linked", **{f"after{i}@client.test": "linked" for i in range(3)}}
    bombed = Message.objects.get(message_id="bomb@evil.test")
    assert message_body(bombed.pk).text == "Привет, bomb\n"
    assert f"html_too_deep: more than {MAX_DEPTH} nested elements, shown as text" in bombed.parse_errors
    assert elapsed < 60, elapsed  # minutes before the bound; a generous ceiling, not a benchmark
