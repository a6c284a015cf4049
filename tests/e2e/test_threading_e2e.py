"""Threading and linking end to end on a real Dovecot: two client companies writing to two mailboxes
of one team over several threads, synced over IMAP (INBOX and Sent) and run through the pipeline.

Replies sent from the CRM (our signed Message-ID, copy in Sent), from a personal mail client (found
in Sent), one whose Message-ID a server rewrote (only References kept), a forward, a reply with a
changed subject: every message lands in the right thread, on the right contact, company and deal. A
reply forged with a participant's address (DMARC fail) and one forged with our own address land
flagged, each in an unverified thread of its own. A message seen in both mailboxes is stored once.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any

import pytest
from tests.factories import (
    CompanyDomainFactory,
    CompanyFactory,
    ContactEmailFactory,
    ContactFactory,
    DealFactory,
)
from tests.ingest.helpers import mailbox_for

from mailroom.conversations.models import Message, MessageContact, Participant, Source, Thread
from mailroom.conversations.pipeline import drain
from mailroom.core.tokens import make_message_id
from mailroom.crm.models import Company, Contact, ContactEmail
from mailroom.ingest.imap.worker import mailbox_sync_once

pytestmark = [pytest.mark.django_db, pytest.mark.e2e]

T0 = datetime(2026, 2, 2, 9, 0, tzinfo=UTC)


def _mail(
    *,
    mid: str,
    frm: str,
    to: str,
    subject: str,
    hours: int,
    cc: str | None = None,
    irt: str | None = None,
    refs: tuple[str, ...] = (),
    headers: dict[str, str] | None = None,
    body: str = "Hello.",
) -> bytes:
    msg = EmailMessage()
    for name, value in (headers or {}).items():
        msg[name] = value
    msg["From"] = frm
    msg["To"] = to
    if cc:
        msg["Cc"] = cc
    msg["Subject"] = subject
    msg["Date"] = format_datetime(T0 + timedelta(hours=hours))
    msg["Message-ID"] = f"<{mid}>"
    if irt:
        msg["In-Reply-To"] = f"<{irt}>"
    if refs:
        msg["References"] = " ".join(f"<{r}>" for r in refs)
    msg.set_content(body + "\n")
    return msg.as_bytes()


def _msg(mid: str) -> Message:
    return Message.objects.get(message_id=mid)


def _rules(m: Message) -> list[str]:
    assert m.routing is not None
    return [r["rule"] for r in m.routing["thread"]["rules"]]


def _thread_mids(thread_id: int | None) -> set[str]:
    assert thread_id is not None
    return set(Message.objects.filter(thread_id=thread_id).values_list("message_id", flat=True))


def _timeline(**kw: Any) -> set[str]:
    return set(MessageContact.objects.filter(**kw).values_list("message__message_id", flat=True))


def test_two_companies_several_threads_replies_from_everywhere(
    mail_user: Any, settings: Any, team: Any
) -> None:
    settings.MAILROOM_TRUSTED_AUTHSERV_IDS = ["mx.company.test"]
    manager_user, sales_user = mail_user(), mail_user()
    manager = mailbox_for(manager_user, team=team)
    sales = mailbox_for(sales_user, team=team)
    me, box2 = manager.email, sales.email

    acme: Any = CompanyFactory(team=team, name="Acme")
    CompanyDomainFactory(company=acme, team=team, domain="acme.test")
    globex: Any = CompanyFactory(team=team, name="Globex")
    CompanyDomainFactory(company=globex, team=team, domain="globex.test")
    anna: Any = ContactFactory(team=team, name="Anna", company=acme)
    ContactEmailFactory(contact=anna, team=team, address="anna@acme.test", canonical="anna@acme.test")
    greg: Any = ContactFactory(team=team, name="Greg", company=globex)
    ContactEmailFactory(contact=greg, team=team, address="greg@globex.test", canonical="greg@globex.test")
    acme_deal: Any = DealFactory(team=team, title="Acme: 100 units", contact=anna, company=acme)
    globex_deal: Any = DealFactory(team=team, title="Globex partnership", company=globex)

    # --- round 1: a client's request, our proposal from a personal mail client, a mail to both boxes.
    manager_user.deliver(
        _mail(mid="a1@acme.test", frm="Anna <anna@acme.test>", to=me, subject="Quote for 100 units", hours=0)
    )
    manager_user.deliver(
        _mail(
            mid="g1.thunderbird@company.test",
            frm=f"Manager <{me}>",
            to="Greg <greg@globex.test>",
            subject="Partnership proposal",
            hours=1,
        ),
        "Sent",
    )
    invoice = _mail(
        mid="s1@acme.test", frm="Anna <anna@acme.test>", to=me, cc=box2, subject="Invoice 7781", hours=2
    )
    manager_user.deliver(invoice)
    sales_user.deliver(invoice)
    for mb in (manager, sales):
        mailbox_sync_once(mb)
    drain()
    t_quote, t_globex, t_invoice = (
        _msg(m).thread_id for m in ("a1@acme.test", "g1.thunderbird@company.test", "s1@acme.test")
    )
    assert t_quote is not None and t_globex is not None and t_invoice is not None
    assert len({t_quote, t_globex, t_invoice}) == 3

    # --- round 2: answers from everywhere, and two forgeries.
    crm_quote = make_message_id(thread_id=t_quote, domain="company.test")
    crm_globex = make_message_id(thread_id=t_globex, domain="company.test")
    exchange_id = "AM6PR04MB5639.eurprd04.prod.outlook.com"
    manager_user.deliver(  # sent from the CRM: our signed Message-ID, the copy in Sent
        _mail(
            mid=crm_quote,
            frm=f"Manager <{me}>",
            to="anna@acme.test",
            subject="Re: Quote for 100 units",
            hours=3,
            irt="a1@acme.test",
            refs=("a1@acme.test",),
        ),
        "Sent",
    )
    manager_user.deliver(  # Exchange gave the reply a new Message-ID and kept only References
        _mail(
            mid=exchange_id,
            frm="Greg <greg@globex.test>",
            to=me,
            subject="AW: Partnership proposal",
            hours=4,
            refs=("g1.thunderbird@company.test",),
        )
    )
    manager_user.deliver(  # a reply to the CRM mail with a subject of its own
        _mail(
            mid="a3@acme.test",
            frm="Anna <anna@acme.test>",
            to=me,
            subject="Delivery in March?",
            hours=5,
            irt=crm_quote,
            refs=("a1@acme.test", crm_quote),
        )
    )
    manager_user.deliver(  # her colleague forwards the request: a conversation of its own
        _mail(
            mid="f1@acme.test",
            frm="Carl <carl@acme.test>",
            to=me,
            subject="Fwd: Quote for 100 units",
            hours=6,
            refs=("a1@acme.test",),
        )
    )
    sales_user.deliver(  # Anna's address forged: her domain's DMARC fails at our MX
        _mail(
            mid="x1@mailer.evil.test",
            frm="Anna <anna@acme.test>",
            to=box2,
            subject="Re: Invoice 7781",
            hours=7,
            irt="s1@acme.test",
            refs=("s1@acme.test",),
            headers={
                "Authentication-Results": "mx.company.test; dkim=fail header.d=acme.test; dmarc=fail header.from=acme.test"
            },
            body="Please pay to our new bank account.",
        )
    )
    sales_user.deliver(  # our own address forged, no authentication, not in any Sent folder
        _mail(
            mid="x2@mailer.evil.test",
            frm=f"Manager <{me}>",
            to=box2,
            subject="Re: Invoice 7781",
            hours=8,
            irt="s1@acme.test",
            refs=("s1@acme.test",),
            body="Approved, pay today.",
        )
    )
    manager_user.deliver(  # the CRM's answer to the rewritten reply
        _mail(
            mid=crm_globex,
            frm=f"Manager <{me}>",
            to="greg@globex.test",
            subject="Re: AW: Partnership proposal",
            hours=9,
            irt=exchange_id,
            refs=("g1.thunderbird@company.test", exchange_id),
        ),
        "Sent",
    )
    for mb in (manager, sales):
        mailbox_sync_once(mb)
    drain()

    # Every message stored once, linked; the invoice seen in both mailboxes is one message.
    assert Message.objects.filter(team=team).count() == 10
    assert set(Message.objects.filter(team=team).values_list("state", flat=True)) == {"linked"}
    invoice_msg = _msg("s1@acme.test")
    assert sorted(Source.objects.filter(message=invoice_msg).values_list("mailbox_id", flat=True)) == sorted(
        [manager.pk, sales.pk]
    )

    # Threads.
    assert _thread_mids(t_quote) == {"a1@acme.test", crm_quote, "a3@acme.test"}
    assert _thread_mids(t_globex) == {"g1.thunderbird@company.test", exchange_id, crm_globex}
    assert _thread_mids(t_invoice) == {"s1@acme.test"}
    forward = _msg("f1@acme.test")
    assert forward.thread_id not in (t_quote, t_globex, t_invoice)
    assert _thread_mids(forward.thread_id) == {"f1@acme.test"}
    counts = dict(Thread.objects.filter(team=team).values_list("id", "message_count"))
    assert (counts[t_quote], counts[t_globex], counts[t_invoice]) == (3, 3, 1)

    # Why: the evidence each message was placed by.
    assert _rules(_msg("a1@acme.test")) == ["new_thread"]
    assert _rules(_msg("g1.thunderbird@company.test")) == ["new_thread"]
    assert _rules(_msg(crm_quote)) == ["in_reply_to_known", "references_known", "sender_verified"]
    # Unsigned answers to our own messages: accepted, flagged unauthenticated (docs/architecture.md).
    assert _rules(_msg(exchange_id)) == ["references_known", "sender_unauthenticated"]
    assert _rules(_msg("a3@acme.test")) == [
        "own_message_id",
        "in_reply_to_known",
        "references_known",
        "sender_unauthenticated",
    ]
    for mid in (exchange_id, "a3@acme.test"):
        assert _msg(mid).routing["thread"]["flags"] == ["unauthenticated"]  # type: ignore[index]
    assert _rules(forward) == ["forward_new_thread", "references_known"]
    assert _rules(_msg(crm_globex)) == ["in_reply_to_known", "references_known", "sender_verified"]

    # Direction: from the Sent folder only.
    directions = dict(Message.objects.filter(team=team).values_list("message_id", "direction"))
    assert {mid for mid, d in directions.items() if d == "outgoing"} == {
        "g1.thunderbird@company.test",
        crm_quote,
        crm_globex,
    }

    # The forgeries: flagged, each in an unverified thread of its own claiming the invoice thread.
    forged_anna, forged_us = _msg("x1@mailer.evil.test"), _msg("x2@mailer.evil.test")
    for forged, flags, first in (
        (forged_anna, ["unverified"], ["unverified_sender", "in_reply_to_known", "references_known"]),
        (
            forged_us,
            ["suspicious", "unverified"],
            ["unverified_sender", "own_address_unauthenticated", "in_reply_to_known", "references_known"],
        ),
    ):
        assert forged.thread_id is not None
        assert forged.thread_id not in (t_quote, t_globex, t_invoice, forward.thread_id)
        assert _thread_mids(forged.thread_id) == {forged.message_id}
        thread = Thread.objects.get(pk=forged.thread_id)
        assert (thread.verification, thread.claimed_thread_id, thread.deal_id) == (
            "unverified",
            t_invoice,
            None,
        )
        assert forged.routing is not None and forged.routing["thread"]["flags"] == flags
        assert _rules(forged) == first
        assert forged.direction == "incoming"
        assert list(MessageContact.objects.filter(message=forged)) == []
        assert set(Participant.objects.filter(message=forged).values_list("contact_id", flat=True)) == {None}
    assert forged_anna.routing is not None
    assert forged_anna.routing["thread"]["rules"][0]["reason"] == (
        f"claims to reply to thread {t_invoice}, but anna@acme.test fails DMARC (dkim=fail)"
    )

    # Contacts: existing ones matched; the forwarding colleague created, in his company by domain.
    carl = Contact.objects.get(team=team, emails__canonical="carl@acme.test")
    assert (carl.company_id, carl.created_automatically) == (acme.pk, True)
    assert Contact.objects.filter(team=team).count() == 3
    assert Company.objects.filter(team=team).count() == 2
    assert not ContactEmail.objects.filter(team=team, canonical__in=[me, box2]).exists()
    assert _timeline(contact=anna) == {"a1@acme.test", crm_quote, "a3@acme.test", "s1@acme.test"}
    assert MessageContact.objects.filter(contact=anna, message=invoice_msg).count() == 1
    assert _timeline(contact=greg) == {"g1.thunderbird@company.test", exchange_id, crm_globex}
    assert _timeline(contact=carl) == {"f1@acme.test"}
    assert _timeline(company=acme) == {
        "a1@acme.test",
        crm_quote,
        "a3@acme.test",
        "s1@acme.test",
        "f1@acme.test",
    }
    assert _timeline(company=globex) == {"g1.thunderbird@company.test", exchange_id, crm_globex}
    senders = dict(
        Participant.objects.filter(message__team=team, role="from").values_list(
            "message__message_id", "contact_id"
        )
    )
    assert senders == {
        "a1@acme.test": anna.pk,
        "g1.thunderbird@company.test": None,
        "s1@acme.test": anna.pk,
        crm_quote: None,
        exchange_id: greg.pk,
        "a3@acme.test": anna.pk,
        "f1@acme.test": carl.pk,
        "x1@mailer.evil.test": None,
        "x2@mailer.evil.test": None,
        crm_globex: None,
    }

    # Deals: the contact's open deal, else the company's.
    deals = dict(Thread.objects.filter(team=team).values_list("id", "deal_id"))
    assert deals == {
        t_quote: acme_deal.pk,
        t_globex: globex_deal.pk,
        t_invoice: acme_deal.pk,
        forward.thread_id: acme_deal.pk,
        forged_anna.thread_id: None,
        forged_us.thread_id: None,
    }
    assert _msg("a3@acme.test").routing["deal"]["deal"] == acme_deal.pk  # type: ignore[index]

    # Idempotent: syncing and linking again changes nothing.
    before = list(Message.objects.filter(team=team).order_by("id").values_list("id", "thread_id", "routing"))
    for mb in (manager, sales):
        mailbox_sync_once(mb)
    drain()
    assert (
        list(Message.objects.filter(team=team).order_by("id").values_list("id", "thread_id", "routing"))
        == before
    )
