from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from mailroom.cli import main
from mailroom.conversations.models import Participant
from tests.conversations.mail import ingest, raw_email
from tests.factories import ContactEmailFactory, ContactFactory, MailboxFactory

pytestmark = pytest.mark.django_db(transaction=False)


def test_relink_since_picks_up_new_contact(team: Any, capsys: Any) -> None:
    box = MailboxFactory(team=team, contact_policy="none")
    old = ingest(
        team,
        box,
        raw_email(mid="o1@c.test", frm="x@c.test", subject="A", date=datetime(2024, 1, 1, tzinfo=UTC)),
    )[0]
    new = ingest(
        team,
        box,
        raw_email(mid="o2@c.test", frm="x@c.test", subject="B", date=datetime(2025, 1, 1, tzinfo=UTC)),
    )[0]
    contact = ContactFactory(team=team)
    ContactEmailFactory(contact=contact, address="x@c.test", canonical="x@c.test")
    assert main(["relink", "--since", "2024-06-01"]) == 0
    assert capsys.readouterr().out == "relinked 1 message(s)\n"
    assert [Participant.objects.get(message=m, role="from").contact_id for m in (old, new)] == [
        None,
        contact.pk,
    ]
    assert main(["relink"]) == 0
    assert Participant.objects.get(message=old, role="from").contact_id == contact.pk
    assert main(["relink", "--since", "yesterday"]) == 1
