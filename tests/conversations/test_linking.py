"""messages_link over real messages stored and parsed by the pipeline."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from mailroom.conversations.linking import messages_link
from mailroom.conversations.models import Message, MessageContact, Participant, Thread
from mailroom.conversations.pipeline import drain
from mailroom.core.tokens import make_message_id
from mailroom.crm.models import Company, Contact, ContactEmail, Deal
from mailroom.mailboxes.models import Mailbox
from mailroom.routing.addresses import canonical_address
from tests.conversations.mail import ingest, raw_email, sent
from tests.factories import (
    CompanyDomainFactory,
    CompanyFactory,
    ContactEmailFactory,
    ContactFactory,
    DealFactory,
    FolderFactory,
    IgnoreEntryFactory,
    MailboxFactory,
    ThreadAliasFactory,
    ThreadFactory,
)

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
pytestmark = pytest.mark.django_db


@pytest.fixture
def mailbox(team: Any) -> Mailbox:
    return MailboxFactory(team=team, email="manager0@company.test")


def _thread_ids(*msgs: Message) -> list[int | None]:
    return [Message.objects.get(pk=m.pk).thread_id for m in msgs]


def _rules(m: Message) -> list[str]:
    m.refresh_from_db()
    assert m.routing is not None
    return [r["rule"] for r in m.routing["thread"]["rules"]]


def _snapshot(team: Any) -> tuple[Any, ...]:
    return (
        list(
            Message.objects.filter(team=team)
            .order_by("id")
            .values_list("id", "thread_id", "routing", "state", "direction")
        ),
        list(Thread.objects.filter(team=team).order_by("id").values()),
        list(Participant.objects.filter(message__team=team).order_by("id").values_list("id", "contact_id")),
        list(
            MessageContact.objects.filter(team=team)
            .order_by("id")
            .values_list("contact_id", "message_id", "date")
        ),
        list(Contact.objects.filter(team=team).order_by("id").values_list("id", "company_id")),
        Company.objects.filter(team=team).count(),
    )


def test_reply_chain_is_one_thread_with_counts_and_reasons(team: Any, mailbox: Mailbox) -> None:
    a = raw_email(mid="a@client.test", frm="Anna <anna@client.test>", subject="Quote", date=T0)
    b = sent(
        raw_email(
            mid="b@company.test",
            frm="manager0@company.test",
            to="anna@client.test",
            subject="Re: Quote",
            date=T0 + timedelta(hours=1),
            irt="a@client.test",
            refs=["a@client.test"],
        )
    )
    c = raw_email(
        mid="c@client.test",
        frm="anna@client.test",
        subject="Re: Quote",
        date=T0 + timedelta(hours=2),
        irt="b@company.test",
        refs=["a@client.test", "b@company.test"],
    )
    ma, mb, mc = ingest(team, mailbox, a, b, c)
    ids = _thread_ids(ma, mb, mc)
    assert ids[0] is not None and ids == [ids[0]] * 3
    thread = Thread.objects.get(pk=ids[0])
    assert (thread.subject, thread.normalized_subject, thread.message_count) == ("Quote", "quote", 3)
    assert (thread.first_message_at, thread.last_message_at) == (T0, T0 + timedelta(hours=2))
    assert _rules(ma) == ["new_thread"]
    assert _rules(mc)[:2] == ["in_reply_to_known", "references_known"]
    assert Message.objects.get(pk=mb.pk).direction == "outgoing"
    assert set(Message.objects.filter(team=team).values_list("state", flat=True)) == {"linked"}


def test_linking_twice_changes_nothing(team: Any, mailbox: Mailbox) -> None:
    deal_contact = ContactFactory(team=team)
    ContactEmailFactory(contact=deal_contact, address="bob@acme.test", canonical="bob@acme.test")
    DealFactory(team=team, contact=deal_contact)
    raws = [
        raw_email(mid="1@acme.test", frm="bob@acme.test", subject="Order", date=T0),
        raw_email(
            mid="2@acme.test",
            frm="newbie@acme.test",
            subject="Re: Order",
            date=T0 + timedelta(minutes=5),
            irt="1@acme.test",
            cc="bob@acme.test",
        ),
        raw_email(mid="3@x.test", frm="zed@zzz.test", subject="Other", date=T0 + timedelta(minutes=9)),
    ]
    msgs = ingest(team, mailbox, *raws)
    before = _snapshot(team)
    messages_link(message_pks=[m.pk for m in msgs])
    messages_link(message_pks=[m.pk for m in reversed(msgs)])
    assert _snapshot(team) == before


def test_outlook_rewritten_message_id_joins_via_references(team: Any, mailbox: Mailbox) -> None:
    first = sent(
        raw_email(
            mid="orig@company.test",
            frm="manager0@company.test",
            to="ceo@bigcorp.test",
            subject="Proposal",
            date=T0,
        )
    )
    # Exchange rewrote our Message-ID on the way and the reply keeps only References (no In-Reply-To).
    reply = raw_email(
        mid="AM0PR01@eurprd.outlook.com",
        frm="ceo@bigcorp.test",
        subject="AW: Proposal",
        date=T0 + timedelta(days=1),
        refs=["orig@company.test"],
    )
    m1, m2 = ingest(team, mailbox, first, reply)
    assert _thread_ids(m2) == _thread_ids(m1)
    assert _rules(m2)[0] == "references_known"


def test_reply_with_changed_subject_joins_via_in_reply_to(team: Any, mailbox: Mailbox) -> None:
    m1, m2 = ingest(
        team,
        mailbox,
        raw_email(mid="p@client.test", frm="anna@client.test", subject="Invoice 42", date=T0),
        sent(
            raw_email(
                mid="q@company.test",
                frm="manager0@company.test",
                to="anna@client.test",
                subject="Totally different words",
                date=T0 + timedelta(hours=3),
                irt="p@client.test",
            )
        ),
    )
    assert _thread_ids(m2) == _thread_ids(m1)
    assert _rules(m2)[0] == "in_reply_to_known"


def test_forward_starts_a_new_thread_unless_it_references_ours(team: Any, mailbox: Mailbox) -> None:
    m1 = ingest(
        team, mailbox, raw_email(mid="x1@client.test", frm="anna@client.test", subject="Specs", date=T0)
    )[0]
    fwd = ingest(
        team,
        mailbox,
        sent(
            raw_email(
                mid="x2@company.test",
                frm="manager0@company.test",
                to="engineer@partner.test",
                subject="Fwd: Specs",
                date=T0 + timedelta(hours=1),
                irt="x1@client.test",
                refs=["x1@client.test"],
            )
        ),
    )[0]
    assert _thread_ids(fwd)[0] != _thread_ids(m1)[0]
    assert _rules(fwd)[0] == "forward_new_thread"
    ours = make_message_id(thread_id=_thread_ids(m1)[0], domain="company.test")
    fwd2 = ingest(
        team,
        mailbox,
        raw_email(
            mid="x3@client.test",
            frm="anna@client.test",
            subject="Fwd: Specs",
            date=T0 + timedelta(hours=2),
            refs=[ours],
        ),
    )[0]
    assert _thread_ids(fwd2) == _thread_ids(m1)
    assert _rules(fwd2)[0] == "own_message_id"


def test_own_message_id_of_merged_thread_follows_the_alias(team: Any, mailbox: Mailbox) -> None:
    survivor = ThreadFactory(team=team, participants=["anna@client.test"])
    alias = ThreadAliasFactory(survivor=survivor)
    ours = make_message_id(thread_id=alias.absorbed_id, domain="company.test")
    m = ingest(
        team,
        mailbox,
        raw_email(mid="r@client.test", frm="anna@client.test", subject="Re: old", date=T0, irt=ours),
    )[0]
    assert _thread_ids(m) == [survivor.pk]


def test_spoofed_reply_gets_an_unverified_thread_of_its_own(team: Any, mailbox: Mailbox) -> None:
    anna = ContactFactory(team=team)
    ContactEmailFactory(contact=anna, address="anna@client.test", canonical="anna@client.test")
    m1 = ingest(
        team,
        mailbox,
        raw_email(mid="s1@client.test", frm="anna@client.test", subject="Bank details", date=T0),
    )[0]
    spoof = ingest(
        team,
        mailbox,
        raw_email(
            mid="s2@evil.test",
            frm="ceo@client.test",
            subject="Re: Bank details",
            date=T0 + timedelta(hours=1),
            irt="s1@client.test",
        ),
    )[0]
    t1, t2 = _thread_ids(m1)[0], _thread_ids(spoof)[0]
    assert t1 != t2
    thread = Thread.objects.get(pk=t2)
    assert (thread.verification, thread.claimed_thread_id) == ("unverified", t1)
    assert _rules(spoof)[0] == "unverified_sender"
    # The claimed sender is not put on a contact card, and no contact is created for it.
    assert list(
        Participant.objects.filter(message=spoof, role="from").values_list("contact_id", flat=True)
    ) == [None]
    assert not ContactEmail.objects.filter(address="ceo@client.test").exists()


def test_authenticated_new_participant_joins(team: Any, mailbox: Mailbox, settings: Any) -> None:
    settings.MAILROOM_TRUSTED_AUTHSERV_IDS = ["mx.company.test"]
    m1 = ingest(
        team, mailbox, raw_email(mid="v1@client.test", frm="anna@client.test", subject="Plan", date=T0)
    )[0]
    m2 = ingest(
        team,
        mailbox,
        raw_email(
            mid="v2@client.test",
            frm="boss@client.test",
            subject="Re: Plan",
            date=T0 + timedelta(hours=1),
            irt="v1@client.test",
            extra={
                "Authentication-Results": "mx.company.test; dkim=pass header.d=client.test; dmarc=pass header.from=client.test"
            },
        ),
    )[0]
    assert _thread_ids(m2) == _thread_ids(m1)
    assert _rules(m2)[-1] == "sender_verified"


def test_same_message_in_two_mailboxes_is_one_message_once_on_the_timeline(
    team: Any, mailbox: Mailbox
) -> None:
    other = MailboxFactory(team=team, email="sales@company.test")
    raw = raw_email(
        mid="dup@client.test",
        frm="anna@client.test",
        to="manager0@company.test, sales@company.test",
        subject="Both of you",
        date=T0,
    )
    m1 = ingest(team, mailbox, raw, folder=FolderFactory(mailbox=mailbox))[0]
    m2 = ingest(team, other, raw, folder=FolderFactory(mailbox=other))[0]
    assert m1.pk == m2.pk
    assert Message.objects.filter(team=team).count() == 1
    assert m1.sources.count() == 2
    contact = ContactEmail.objects.get(team=team, address="anna@client.test").contact
    assert list(MessageContact.objects.filter(contact=contact).values_list("message_id", flat=True)) == [
        m1.pk
    ]


def test_gmail_dots_and_plus_tags_resolve_to_one_contact(team: Any, mailbox: Mailbox) -> None:
    c = ContactFactory(team=team)
    ContactEmailFactory(
        contact=c, address="john.smith@gmail.com", canonical=canonical_address("john.smith@gmail.com")
    )
    m1, m2 = ingest(
        team,
        mailbox,
        raw_email(mid="g1@gmail.com", frm="JohnSmith+crm@GMAIL.com", subject="Hi", date=T0),
        raw_email(
            mid="g2@gmail.com", frm="j.o.h.n.smith@googlemail.com", subject="Hi again", date=T0 + timedelta(1)
        ),
    )
    assert list(
        Participant.objects.filter(message__in=[m1, m2], role="from").values_list("contact_id", flat=True)
    ) == [c.pk, c.pk]
    assert Contact.objects.filter(team=team).count() == 1


def test_policy_creates_sender_contacts_with_company_but_not_for_freemail(
    team: Any, mailbox: Mailbox
) -> None:
    ingest(
        team,
        mailbox,
        raw_email(
            mid="n1@acme-corp.test",
            frm="Ivan Petrov <ivan@acme-corp.test>",
            cc="olga@acme-corp.test",
            subject="Hello",
            date=T0,
        ),
        raw_email(
            mid="n2@gmail.com", frm="Pat <pat@gmail.com>", subject="Hello", date=T0 + timedelta(minutes=1)
        ),
        raw_email(
            mid="n3@yandex.ru", frm="vasya@yandex.ru", subject="Привет", date=T0 + timedelta(minutes=2)
        ),
    )
    ivan = ContactEmail.objects.get(team=team, address="ivan@acme-corp.test").contact
    assert (ivan.name, ivan.created_automatically, ivan.company.name) == ("Ivan Petrov", True, "Acme-corp")
    assert list(ivan.company.domains.values_list("domain", flat=True)) == ["acme-corp.test"]
    assert ContactEmail.objects.get(team=team, address="pat@gmail.com").contact.company is None
    assert ContactEmail.objects.get(team=team, address="vasya@yandex.ru").contact.company is None
    # "senders": a cc'ed person gets no contact.
    assert not ContactEmail.objects.filter(address="olga@acme-corp.test").exists()
    assert Company.objects.filter(team=team).count() == 1


def test_existing_company_domain_is_matched(team: Any, mailbox: Mailbox) -> None:
    company = CompanyFactory(team=team, name="Globex")
    CompanyDomainFactory(company=company, domain="globex.test")
    ingest(team, mailbox, raw_email(mid="e1@globex.test", frm="hank@globex.test", subject="Hi", date=T0))
    assert ContactEmail.objects.get(address="hank@globex.test").contact.company_id == company.pk
    assert Company.objects.filter(team=team).count() == 1


def test_policy_all_none_and_exclusions(team: Any) -> None:
    all_box = MailboxFactory(team=team, email="all@company.test", contact_policy=Mailbox.ContactPolicy.ALL)
    none_box = MailboxFactory(team=team, email="none@company.test", contact_policy=Mailbox.ContactPolicy.NONE)
    IgnoreEntryFactory(team=team, kind="domain", value="vendor.test")
    IgnoreEntryFactory(team=team, kind="address", value="spam@client.test")
    ingest(
        team,
        all_box,
        raw_email(
            mid="p1@client.test",
            frm="anna@client.test",
            to="all@company.test",
            cc="bob@client.test, x@sub.vendor.test, spam@client.test, none@company.test",
            subject="Hello",
            date=T0,
        ),
    )
    ingest(
        team,
        all_box,
        raw_email(
            mid="p2@client.test",
            frm="noreply@client.test",
            to="all@company.test",
            subject="Your receipt",
            date=T0,
        ),
    )
    ingest(
        team,
        all_box,
        raw_email(
            mid="p3@lists.test",
            frm="news@lists.test",
            to="all@company.test",
            subject="Weekly",
            date=T0,
            extra={
                "List-Id": "<weekly.lists.test>",
                "Precedence": "list",
                "List-Unsubscribe": "<mailto:u@lists.test>",
            },
        ),
    )
    ingest(
        team,
        none_box,
        raw_email(mid="p4@other.test", frm="carl@other.test", to="none@company.test", subject="Hi", date=T0),
    )
    assert sorted(ContactEmail.objects.filter(team=team).values_list("address", flat=True)) == [
        "anna@client.test",
        "bob@client.test",
    ]


def test_deal_single_open_ambiguous_and_sticky(team: Any, mailbox: Mailbox) -> None:
    one = ContactFactory(team=team)
    ContactEmailFactory(contact=one, address="one@client.test", canonical="one@client.test")
    deal = DealFactory(team=team, contact=one)
    DealFactory(team=team, contact=one, status=Deal.Status.WON)
    two = ContactFactory(team=team)
    ContactEmailFactory(contact=two, address="two@client.test", canonical="two@client.test")
    d1, d2 = DealFactory(team=team, contact=two), DealFactory(team=team, contact=two)
    m1, m2 = ingest(
        team,
        mailbox,
        raw_email(mid="d1@client.test", frm="one@client.test", subject="A", date=T0),
        raw_email(mid="d2@client.test", frm="two@client.test", subject="B", date=T0),
    )
    t1 = Thread.objects.get(pk=_thread_ids(m1)[0])
    assert (t1.deal_id, t1.deal_source) == (deal.pk, "auto")
    t2 = Thread.objects.get(pk=_thread_ids(m2)[0])
    assert (t2.deal_id, t2.deal_candidates) == (None, sorted([d1.pk, d2.pk]))
    m2.refresh_from_db()
    assert m2.routing["deal"]["rule"] == "deal_ambiguous"
    # The user picks; later replies stay on the chosen deal.
    from mailroom.conversations.threads import thread_set_deal

    thread_set_deal(thread=t2, deal=d2, user=None)
    m3 = ingest(
        team,
        mailbox,
        raw_email(
            mid="d3@client.test",
            frm="two@client.test",
            subject="Re: B",
            date=T0 + timedelta(hours=1),
            irt="d2@client.test",
            authenticated=True,
        ),
    )[0]
    t2.refresh_from_db()
    assert (_thread_ids(m3)[0], t2.deal_id, t2.deal_source) == (t2.pk, d2.pk, "user")
    m3.refresh_from_db()
    assert m3.routing["deal"]["rule"] == "thread_deal"


def test_company_open_deal_when_contact_has_none(team: Any, mailbox: Mailbox) -> None:
    company = CompanyFactory(team=team)
    c = ContactFactory(team=team, company=company)
    ContactEmailFactory(contact=c, address="k@client.test", canonical="k@client.test")
    deal = DealFactory(team=team, company=company)
    m = ingest(team, mailbox, raw_email(mid="k1@client.test", frm="k@client.test", subject="Q", date=T0))[0]
    assert Thread.objects.get(pk=_thread_ids(m)[0]).deal_id == deal.pk


def test_reply_arriving_before_its_parent_is_joined_when_the_parent_comes(
    team: Any, mailbox: Mailbox
) -> None:
    reply = ingest(
        team,
        mailbox,
        raw_email(
            mid="late2@client.test",
            frm="anna@client.test",
            subject="Re: Late",
            date=T0 + timedelta(hours=1),
            irt="late1@company.test",
        ),
    )[0]
    parent = ingest(
        team,
        mailbox,
        sent(
            raw_email(
                mid="late1@company.test",
                frm="manager0@company.test",
                to="anna@client.test",
                subject="Late",
                date=T0,
            )
        ),
    )[0]
    assert _thread_ids(parent) == _thread_ids(reply)
    assert "referenced_by_thread" in _rules(parent)


def test_subject_fallback_needs_shared_participants_and_window(team: Any, mailbox: Mailbox) -> None:
    m1 = ingest(
        team, mailbox, raw_email(mid="f1@client.test", frm="anna@client.test", subject="Contract", date=T0)
    )[0]
    m2 = ingest(
        team,
        mailbox,
        raw_email(mid="", frm="anna@client.test", subject="RE: Contract", date=T0 + timedelta(days=2),
                  authenticated=True),
    )[0]
    m3 = ingest(
        team,
        mailbox,
        raw_email(mid="", frm="stranger@else.test", subject="Re: Contract", date=T0 + timedelta(days=2)),
    )[0]
    m4 = ingest(
        team,
        mailbox,
        raw_email(mid="", frm="anna@client.test", subject="Re: Contract", date=T0 + timedelta(days=90),
                  authenticated=True),
    )[0]
    # Anyone can write a participant's address and the subject: unauthenticated, held for review.
    m5 = ingest(
        team,
        mailbox,
        raw_email(mid="", frm="anna@client.test", subject="Re: Contract", date=T0 + timedelta(days=3)),
    )[0]
    t = _thread_ids(m1)[0]
    assert _thread_ids(m2) == [t]
    assert _rules(m2) == ["subject_participants", "sender_verified"]
    t5 = Thread.objects.get(pk=_thread_ids(m5)[0])
    assert (t5.pk != t, t5.verification, t5.claimed_thread_id) == (True, "unverified", t)
    assert _thread_ids(m3)[0] != t
    assert _thread_ids(m4)[0] != t


def test_relink_picks_up_a_contact_added_later(team: Any, mailbox: Mailbox) -> None:
    mailbox.contact_policy = Mailbox.ContactPolicy.NONE
    mailbox.save()
    m = ingest(
        team, mailbox, raw_email(mid="old@client.test", frm="late@client.test", subject="Old", date=T0)
    )[0]
    assert Participant.objects.get(message=m, role="from").contact_id is None
    c = ContactFactory(team=team)
    ContactEmailFactory(contact=c, address="late@client.test", canonical="late@client.test")
    messages_link(message_pks=[m.pk])
    assert Participant.objects.get(message=m, role="from").contact_id == c.pk
    assert list(MessageContact.objects.filter(contact=c).values_list("message_id", flat=True)) == [m.pk]


def test_own_from_without_authentication_is_incoming_suspicious_and_off_the_thread(
    team: Any, mailbox: Mailbox
) -> None:
    anna = ContactFactory(team=team)
    ContactEmailFactory(contact=anna, address="anna@client.test", canonical="anna@client.test")
    m1, m2 = ingest(
        team,
        mailbox,
        raw_email(mid="o1@client.test", frm="anna@client.test", subject="Payment", date=T0),
        sent(
            raw_email(
                mid="o2@company.test",
                frm="manager0@company.test",
                to="anna@client.test",
                subject="Re: Payment",
                date=T0 + timedelta(hours=1),
                irt="o1@client.test",
            )
        ),
    )
    # Anyone can write "From: manager0@company.test": arriving in the INBOX without authentication.
    fake = ingest(
        team,
        mailbox,
        raw_email(
            mid="o3@evil.test",
            frm="Manager <manager0@company.test>",
            to="anna@client.test",
            subject="Re: Payment",
            date=T0 + timedelta(hours=2),
            irt="o2@company.test",
        ),
    )[0]
    fake.refresh_from_db()
    t1 = _thread_ids(m1)[0]
    assert _thread_ids(m2) == [t1]
    assert fake.thread_id not in (None, t1)
    assert fake.direction == "incoming"
    assert fake.routing is not None
    assert fake.routing["thread"]["flags"] == ["suspicious", "unverified"]
    assert _rules(fake) == ["unverified_sender", "own_address_unauthenticated", "in_reply_to_known"]
    assert fake.routing["contacts"] == [
        {
            "rule": "unverified_sender",
            "reason": "sender not linked to a contact until accepted",
        },
        {
            "rule": "suspicious",
            "reason": "claims one of our addresses unauthenticated: on no contact's card",
        },
    ]
    thread = Thread.objects.get(pk=fake.thread_id)
    assert (thread.verification, thread.claimed_thread_id, thread.message_count) == ("unverified", t1, 1)
    # Not on Anna's card (the recipient), no contact for anybody.
    assert list(MessageContact.objects.filter(message=fake).values_list("contact_id", flat=True)) == []
    assert list(Participant.objects.filter(message=fake).values_list("contact_id", flat=True)) == [None, None]
    assert Thread.objects.get(pk=t1).message_count == 2


def test_own_from_authenticated_copy_is_outgoing(team: Any, mailbox: Mailbox, settings: Any) -> None:
    settings.MAILROOM_TRUSTED_AUTHSERV_IDS = ["mx.company.test"]
    m1 = ingest(
        team, mailbox, raw_email(mid="w1@client.test", frm="anna@client.test", subject="Visit", date=T0)
    )[0]
    # Our own mail Bcc'd back to the mailbox, DKIM-signed by our domain: outgoing although not in Sent.
    m2 = ingest(
        team,
        mailbox,
        raw_email(
            mid="w2@company.test",
            frm="manager0@company.test",
            to="anna@client.test",
            subject="Re: Visit",
            date=T0 + timedelta(hours=1),
            irt="w1@client.test",
            extra={"Authentication-Results": "mx.company.test; dkim=pass header.d=company.test"},
        ),
    )[0]
    m2.refresh_from_db()
    assert _thread_ids(m2) == _thread_ids(m1)
    assert m2.direction == "outgoing"
    assert _rules(m2) == ["own_address_authenticated", "in_reply_to_known", "sender_verified"]
    assert m2.routing is not None and m2.routing["thread"]["flags"] == []


def test_reply_delivered_to_a_relay_token_joins_the_token_thread(
    team: Any, mailbox: Mailbox, settings: Any
) -> None:
    from mailroom.ingest.rawstore import IncomingRaw, store_batch
    from mailroom.outbound.relay import relay_address, relay_token_create

    settings.MAILROOM_RELAY_DOMAIN = "relay.company.test"
    m1 = ingest(
        team, mailbox, raw_email(mid="r1@client.test", frm="anna@client.test", subject="Offer", date=T0)
    )[0]
    t1 = _thread_ids(m1)[0]
    token = relay_token_create(kind="client", mailbox=mailbox, owner=None, thread_id=t1)
    # The client's mail program dropped every threading header and changed the subject.
    raw = raw_email(
        mid="r2@client.test",
        frm="anna@client.test",
        to=relay_address(token.token),
        subject="our answer",
        date=T0 + timedelta(hours=1),
    )
    res = store_batch(
        team_id=team.pk,
        items=[IncomingRaw(raw=raw, key=f"lmtp:{relay_address(token.token)}:abc123")],
        kind="lmtp",
        mailbox=mailbox,
    )
    drain()
    m2 = Message.objects.get(pk=res.message_pks[0])
    assert _thread_ids(m2) == [t1]
    assert _rules(m2) == ["relay_token", "sender_verified"]
    assert m2.routing is not None
    assert m2.routing["thread"]["rules"][0] == {
        "rule": "relay_token",
        "reason": f"delivered to the signed reply address of thread {t1}",
        "thread": t1,
        "weight": 100,
    }
    # The same address in a header, without the envelope (not delivered through the relay), is no evidence.
    m3 = ingest(
        team,
        mailbox,
        raw_email(
            mid="r3@client.test",
            frm="anna@client.test",
            to=relay_address(token.token),
            subject="another thing",
            date=T0 + timedelta(hours=2),
        ),
    )[0]
    assert _thread_ids(m3)[0] != t1
    assert _rules(m3) == ["new_thread"]


def test_relay_token_follows_a_thread_merge(team: Any, mailbox: Mailbox, settings: Any) -> None:
    from mailroom.conversations.threads import thread_merge
    from mailroom.ingest.rawstore import IncomingRaw, store_batch
    from mailroom.outbound.models import RelayToken
    from mailroom.outbound.relay import relay_address, relay_token_create

    settings.MAILROOM_RELAY_DOMAIN = "relay.company.test"
    m1, m2 = ingest(
        team,
        mailbox,
        raw_email(mid="k1@client.test", frm="anna@client.test", subject="One", date=T0),
        raw_email(mid="k2@client.test", frm="anna@client.test", subject="Two", date=T0 + timedelta(hours=1)),
    )
    t1, t2 = _thread_ids(m1)[0], _thread_ids(m2)[0]
    assert t1 is not None and t2 is not None and t1 != t2
    token = relay_token_create(kind="client", mailbox=mailbox, owner=None, thread_id=t2)
    thread_merge(survivor=Thread.objects.get(pk=t1), absorbed=Thread.objects.get(pk=t2), user=None)
    assert RelayToken.objects.get(pk=token.pk).thread_id == t1
    raw = raw_email(mid="k3@client.test", frm="anna@client.test", subject="hi", date=T0 + timedelta(hours=2))
    res = store_batch(
        team_id=team.pk,
        items=[IncomingRaw(raw=raw, key=f"lmtp:{relay_address(token.token)}:k3")],
        kind="lmtp",
        mailbox=mailbox,
    )
    drain()
    m3 = Message.objects.get(pk=res.message_pks[0])
    assert _thread_ids(m3) == [t1]
    assert _rules(m3) == ["relay_token", "sender_verified"]


def test_bridge_merges_of_one_batch_move_everything_hung_on_the_absorbed_threads(
    team: Any, mailbox: Mailbox, settings: Any
) -> None:
    """Two bridges in one batch, into two survivors (all of a batch's merges are written at once)."""
    from mailroom.conversations.models import ThreadAlias
    from mailroom.ingest.rawstore import IncomingRaw, store_batch
    from mailroom.outbound.models import RelayToken
    from mailroom.outbound.relay import relay_token_create

    settings.MAILROOM_RELAY_DOMAIN = "relay.company.test"
    anna, boris = "anna@client.test", "boris@other.test"
    a1, b1 = ingest(
        team, mailbox,
        raw_email(mid="a1@client.test", frm=anna, subject="Alpha", date=T0),
        raw_email(mid="b1@other.test", frm=boris, subject="Beta", date=T0 + timedelta(minutes=1)),
    )
    # Replies to messages not here yet: each starts a thread of its own.
    ra, rb = ingest(
        team, mailbox,
        raw_email(mid="ra@client.test", frm=anna, subject="Re: Alpha 2", date=T0 + timedelta(hours=3), irt="pa@client.test"),
        raw_email(mid="rb@other.test", frm=boris, subject="Re: Beta 2", date=T0 + timedelta(hours=3), irt="pb@other.test"),
    )
    ta, tb, tra, trb = _thread_ids(a1, b1, ra, rb)
    assert ta is not None and tb is not None and tra is not None and trb is not None
    assert len({ta, tb, tra, trb}) == 4
    token = relay_token_create(kind="client", mailbox=mailbox, owner=None, thread_id=tra)
    claiming = ThreadFactory(team=team, claimed_thread_id=tra)
    older = ThreadAliasFactory(survivor=Thread.objects.get(pk=trb))
    # The missing parents arrive in one batch: each joins its thread and bridges the replies' thread.
    res = store_batch(
        team_id=team.pk, kind="lmtp", mailbox=mailbox,
        items=[
            IncomingRaw(raw=raw_email(mid="pa@client.test", frm=anna, subject="Re: Alpha", irt="a1@client.test",
                                      date=T0 + timedelta(hours=2), authenticated=True), key="bridge:pa"),
            IncomingRaw(raw=raw_email(mid="pb@other.test", frm=boris, subject="Re: Beta", irt="b1@other.test",
                                      date=T0 + timedelta(hours=2), authenticated=True), key="bridge:pb"),
        ],
    )
    drain()
    pa, pb = Message.objects.filter(pk__in=res.message_pks).order_by("message_id")
    assert _thread_ids(a1, ra, pa) == [ta, ta, ta]
    assert _thread_ids(b1, rb, pb) == [tb, tb, tb]
    assert [r for r in _rules(pa) if r == "bridge_merge"] == ["bridge_merge"]
    assert not Thread.objects.filter(pk__in=[tra, trb]).exists()
    assert dict(ThreadAlias.objects.filter(team=team).values_list("absorbed_id", "survivor_id")) == {
        tra: ta, trb: tb, older.absorbed_id: tb,
    }
    assert RelayToken.objects.get(pk=token.pk).thread_id == ta
    assert Thread.objects.get(pk=claiming.pk).claimed_thread_id == ta
    assert Thread.objects.get(pk=ta).message_count == 3 and Thread.objects.get(pk=tb).message_count == 3


@pytest.mark.parametrize("how", ["two_from_headers", "two_addresses_no_sender"])
def test_ambiguous_from_is_held_and_never_makes_a_participant(team: Any, mailbox: Mailbox, how: str) -> None:
    m1 = ingest(team, mailbox, raw_email(mid="a1@client.test", frm="anna@client.test", subject="Invoice", date=T0))[0]
    if how == "two_from_headers":
        raw = raw_email(mid="a2@evil.test", frm="anna@client.test", subject="Re: Invoice",
                        date=T0 + timedelta(hours=1), irt="a1@client.test", extra={"From": "mallory@evil.test"})
    else:
        raw = raw_email(mid="a2@evil.test", frm="anna@client.test, mallory@evil.test", subject="Re: Invoice",
                        date=T0 + timedelta(hours=1), irt="a1@client.test")
    forged = ingest(team, mailbox, raw)[0]
    t1, t2 = _thread_ids(m1)[0], _thread_ids(forged)[0]
    assert t1 != t2
    assert Thread.objects.get(pk=t2).verification == "unverified"
    assert _rules(forged) == ["ambiguous_from"]
    # The second address's own mail, replying in the real thread, does not join it either.
    later = ingest(team, mailbox, raw_email(mid="a3@evil.test", frm="mallory@evil.test", subject="Re: Invoice",
                                            date=T0 + timedelta(hours=2), irt="a1@client.test"))[0]
    assert _thread_ids(later)[0] != t1
    assert _rules(later)[0] == "unverified_sender"
    assert Thread.objects.get(pk=t1).message_count == 1


def test_several_from_addresses_with_a_sender_are_not_ambiguous(team: Any, mailbox: Mailbox) -> None:
    m1 = ingest(team, mailbox, raw_email(mid="b1@client.test", frm="anna@client.test", subject="Plan", date=T0))[0]
    reply = ingest(team, mailbox, raw_email(
        mid="b2@client.test", frm="anna@client.test, boris@client.test", subject="Re: Plan",
        date=T0 + timedelta(hours=1), irt="b1@client.test", extra={"Sender": "anna@client.test"},
        authenticated=True))[0]
    assert _thread_ids(m1) == _thread_ids(reply)


def test_outgoing_recipients_are_on_their_contacts_cards(team: Any, mailbox: Mailbox) -> None:
    from tests.conversations.mail import sent

    anna = ContactFactory(team=team)
    ContactEmailFactory(contact=anna, address="anna@client.test", canonical="anna@client.test")
    out = ingest(team, mailbox, sent(raw_email(mid="o1@company.test", frm="manager0@company.test",
                                               to="anna@client.test", cc="boris@newclient.test",
                                               subject="Offer", date=T0)))[0]
    assert out.direction == "outgoing"
    by_role = dict(Participant.objects.filter(message=out).values_list("address", "contact_id"))
    boris = ContactEmail.objects.get(canonical="boris@newclient.test").contact_id  # created: the counterpart
    assert by_role == {"manager0@company.test": None, "anna@client.test": anna.pk, "boris@newclient.test": boris}
    assert set(MessageContact.objects.filter(message=out).values_list("contact_id", flat=True)) == {anna.pk, boris}
