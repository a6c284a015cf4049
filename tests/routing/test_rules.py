"""Pure routing rules: subjects, Thread-Index, addresses, the resolver's weighing, linking rules."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest

from mailroom.routing.addresses import canonical_address, is_automated_address, is_freemail
from mailroom.routing.linkrules import (
    ContactContext,
    DealInput,
    ParticipantIn,
    choose_deal,
    company_domain,
    plan_contacts,
    strongest_policy,
)
from mailroom.routing.resolver import resolve
from mailroom.routing.rules import AuthVerdict, Candidates, RoutingInput, ThreadInfo
from mailroom.routing.subjects import is_forward, normalize_subject
from mailroom.routing.threadindex import conversation_id, depth

T0 = datetime(2025, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("subject", "norm", "forward"),
    [
        ("Re: Hello", "hello", False),
        ("RE[2]: Hello", "hello", False),
        ("Re(3): Re: hello ", "hello", False),
        ("Fwd: Hello", "hello", True),
        ("FW: Hello", "hello", True),
        ("AW: WG: Hello", "hello", False),
        ("WG: Hello", "hello", True),
        ("Отв: Счёт №5", "счёт №5", False),
        ("Ответ: Re: Счёт", "счёт", False),
        ("Пересл: Договор", "договор", True),
        ("[list] Re: Topic (fwd)", "topic", False),
        ("Ad: Re: x", "ad: re: x", False),
        ("", "", False),
    ],
)
def test_subjects(subject: str, norm: str, forward: bool) -> None:
    assert (normalize_subject(subject), is_forward(subject)) == (norm, forward)


def test_thread_index_conversation_id() -> None:
    head = bytes(range(22))
    starter = base64.b64encode(head).decode()
    reply = base64.b64encode(head + b"\x01\x02\x03\x04\x05").decode()
    assert conversation_id(starter) == conversation_id(reply) == head.hex()
    assert (depth(starter), depth(reply)) == (0, 1)
    assert conversation_id("not base64!") == ""
    assert conversation_id(base64.b64encode(b"short").decode()) == ""


@pytest.mark.parametrize(
    ("address", "canonical"),
    [
        ("John.Smith+crm@GMail.com", "johnsmith@gmail.com"),
        ("j.ohn.smith@googlemail.com", "johnsmith@gmail.com"),
        ("ivan.petrov+x@ya.ru", "ivan-petrov@yandex.ru"),
        ("anna+tag@outlook.com", "anna@outlook.com"),
        ("a.b+tag@company.test", "a.b+tag@company.test"),
    ],
)
def test_canonical_address(address: str, canonical: str) -> None:
    assert canonical_address(address) == canonical


def test_freemail_and_automated() -> None:
    assert [
        is_freemail(d)
        for d in (
            "gmail.com",
            "yandex.ru",
            "ya.ru",
            "mail.ru",
            "bk.ru",
            "list.ru",
            "inbox.ru",
            "rambler.ru",
            "outlook.com",
            "hotmail.com",
            "icloud.com",
            "acme.test",
        )
    ] == [True] * 11 + [False]
    assert [
        is_automated_address(a)
        for a in (
            "noreply@x.test",
            "no-reply@x.test",
            "mailer-daemon@x.test",
            "bounces+1@x.test",
            "anna@x.test",
        )
    ] == [True, True, True, True, False]


def _msg(**kw: object) -> RoutingInput:
    base: dict[str, object] = {
        "message_id": "new@x.test",
        "subject": "Re: Hi",
        "from_address": "anna@client.test",
        "date": T0,
    }
    base.update(kw)
    return RoutingInput(**base)  # type: ignore[arg-type]


ANNA_SIGNED = AuthVerdict(dkim="pass", dkim_domains=("client.test",))


def _info(t: int, *people: str) -> ThreadInfo:
    return ThreadInfo(t, frozenset(people), T0, "hi")


def test_in_reply_to_outweighs_older_references() -> None:
    cand = Candidates(
        threads={1: _info(1, "anna@client.test"), 2: _info(2, "anna@client.test")},
        by_message_id={"old@x": 1, "parent@x": 2},
    )
    d = resolve(_msg(in_reply_to=("parent@x",), references=("old@x", "parent@x"), auth=ANNA_SIGNED), cand)
    assert d.thread_id == 2
    assert [h.rule for h in d.rules] == [
        "in_reply_to_known",
        "references_known",
        "references_known",
        "conflicting_evidence",
        "sender_verified",
    ]


def test_spoof_needs_participant_or_authentication() -> None:
    cand = Candidates(threads={1: _info(1, "anna@client.test")}, by_message_id={"p@x": 1})
    spoof = resolve(_msg(from_address="ceo@client.test", in_reply_to=("p@x",)), cand)
    assert (spoof.thread_id, spoof.claimed_thread_id, spoof.flags) == (None, 1, ("unverified",))
    authed = resolve(
        _msg(
            from_address="ceo@client.test",
            in_reply_to=("p@x",),
            auth=AuthVerdict(dkim="pass", dkim_domains=("client.test",)),
        ),
        cand,
    )
    assert authed.thread_id == 1
    unaligned = resolve(
        _msg(
            from_address="ceo@client.test",
            in_reply_to=("p@x",),
            auth=AuthVerdict(dkim="pass", dkim_domains=("evil.test",)),
        ),
        cand,
    )
    assert unaligned.thread_id is None
    outgoing = resolve(_msg(from_address="me@company.test", direction="outgoing", in_reply_to=("p@x",)), cand)
    assert outgoing.thread_id == 1


def test_forward_new_thread_unless_own_message_id() -> None:
    cand = Candidates(
        threads={1: _info(1, "anna@client.test")}, by_message_id={"p@x": 1}, own_message_ids={"mr.ours@x": 1}
    )
    assert resolve(_msg(subject="Fwd: Hi", in_reply_to=("p@x",)), cand).thread_id is None
    assert resolve(_msg(subject="Fwd: Hi", references=("mr.ours@x",)), cand).thread_id == 1


def test_subject_fallback_window_and_participants() -> None:
    cand = Candidates(threads={1: _info(1, "anna@client.test")}, by_subject=(1,))
    joined = resolve(_msg(auth=ANNA_SIGNED), cand)
    assert joined.thread_id == 1
    assert [(h.rule, h.reason) for h in joined.rules] == [
        ("subject_participants", "subject 'hi' and participant(s) anna@client.test match thread 1 within 30 days"),
        ("sender_verified", "DKIM pass for client.test"),
    ]
    assert resolve(_msg(date=T0 + timedelta(days=31), auth=ANNA_SIGNED), cand).thread_id is None
    assert resolve(_msg(from_address="bob@client.test"), cand).thread_id is None
    assert resolve(_msg(subject="Hi", auth=ANNA_SIGNED), cand).thread_id is None  # not a reply
    # A subject and a participant's address are anyone's to copy: unauthenticated, held for review.
    forged = resolve(_msg(), cand)
    assert (forged.thread_id, forged.claimed_thread_id, forged.flags) == (None, 1, ("unverified",))
    assert forged.rules[0].reason == (
        "claims to reply to thread 1, but anna@client.test is a participant of thread 1 but not "
        "authenticated (dkim=none, dmarc=none) and answers none of our messages to them"
    )


def test_user_placement_wins() -> None:
    cand = Candidates(threads={1: _info(1)}, by_message_id={"p@x": 1}, override_thread=7)
    assert resolve(_msg(in_reply_to=("p@x",)), cand).thread_id == 7


def test_contact_plan_by_policy() -> None:
    people = [
        ParticipantIn("from", "anna@client.test", "Anna"),
        ParticipantIn("to", "me@company.test"),
        ParticipantIn("cc", "bob@client.test"),
    ]
    ctx = ContactContext(policy="senders", direction="incoming", own_addresses=frozenset({"me@company.test"}))
    assert [c.canonical for c in plan_contacts(people, frozenset(), ctx).create] == ["anna@client.test"]
    ctx_all = ContactContext(policy="all", direction="incoming", own_addresses=frozenset({"me@company.test"}))
    plan = plan_contacts(people, frozenset(), ctx_all)
    assert [c.canonical for c in plan.create] == ["anna@client.test", "bob@client.test"]
    assert [h.rule for h in plan.skipped] == ["own_address"]
    bulk = ContactContext(policy="all", direction="incoming", is_bulk=True)
    assert [h.rule for h in plan_contacts(people[:1], frozenset(), bulk).skipped] == ["mailing_list"]
    assert strongest_policy(["none", "all", "senders"]) == "all"
    assert company_domain("pat@gmail.com") == (None, "gmail.com is a free-mail domain: no company")


def test_choose_deal() -> None:
    assert choose_deal(DealInput(thread_deal=5, thread_deal_source="user")).deal_id == 5
    assert choose_deal(DealInput(None, "", contact_open_deals={1: (9,)})).deal_id == 9
    amb = choose_deal(DealInput(None, "", contact_open_deals={1: (9,), 2: (8,)}))
    assert (amb.deal_id, amb.candidates, amb.hit.rule) == (None, (8, 9), "deal_ambiguous")
    assert choose_deal(DealInput(None, "", company_open_deals={3: (4,)})).deal_id == 4
    assert choose_deal(DealInput(None, "")).hit.rule == "no_open_deal"


OWN = frozenset({"manager@company.test"})


def test_own_from_unauthenticated_stays_incoming_is_suspicious_and_cannot_join() -> None:
    cand = Candidates(
        threads={1: _info(1, "anna@client.test", "manager@company.test")},
        by_message_id={"p@x": 1},
        own_addresses=OWN,
    )
    d = resolve(_msg(from_address="Manager@Company.test", in_reply_to=("p@x",)), cand)
    assert (d.thread_id, d.claimed_thread_id, d.direction) == (None, 1, "incoming")
    assert d.flags == ("suspicious", "unverified")
    assert [h.rule for h in d.rules] == [
        "unverified_sender",
        "own_address_unauthenticated",
        "in_reply_to_known",
    ]
    assert d.rules[0].reason == (
        "claims to reply to thread 1, but Manager@Company.test is one of the team's addresses, "
        "unauthenticated, not from a Sent folder"
    )
    assert d.rules[1].reason == (
        "From Manager@Company.test is one of the team's addresses but the message is not authenticated "
        "(dkim=none, dmarc=none) and was not found in a Sent folder: kept incoming, suspicious"
    )
    # Without header evidence: a new thread, still flagged, the rule recorded.
    alone = resolve(_msg(from_address="manager@company.test", subject="Invoice"), cand)
    assert (alone.thread_id, alone.flags, alone.direction) == (None, ("suspicious",), "incoming")
    assert [h.rule for h in alone.rules] == ["own_address_unauthenticated", "new_thread"]


def test_own_from_authenticated_or_sent_copy_is_outgoing() -> None:
    cand = Candidates(threads={1: _info(1, "anna@client.test")}, by_message_id={"p@x": 1}, own_addresses=OWN)
    dkim = AuthVerdict(
        dkim="pass", dkim_domains=("mail.company.test",)
    )  # aligned: same organizational domain
    d = resolve(_msg(from_address="manager@company.test", in_reply_to=("p@x",), auth=dkim), cand)
    assert (d.thread_id, d.flags, d.direction) == (1, (), "outgoing")
    assert [h.rule for h in d.rules] == ["own_address_authenticated", "in_reply_to_known", "sender_verified"]
    assert d.rules[0].reason == (
        "From manager@company.test is one of the team's addresses (DKIM pass for mail.company.test): outgoing"
    )
    dmarc = resolve(
        _msg(from_address="manager@company.test", in_reply_to=("p@x",), auth=AuthVerdict(dmarc="pass")), cand
    )
    assert (dmarc.thread_id, dmarc.direction) == (1, "outgoing")
    # A signature of another domain vouches for nothing about From.
    other = AuthVerdict(dkim="pass", dkim_domains=("evil.test",))
    spoof = resolve(_msg(from_address="manager@company.test", in_reply_to=("p@x",), auth=other), cand)
    assert (spoof.thread_id, spoof.direction, spoof.flags) == (None, "incoming", ("suspicious", "unverified"))
    # A Sent-folder copy is outgoing without any check (and records no own-address rule).
    sent = resolve(
        _msg(from_address="manager@company.test", in_reply_to=("p@x",), direction="outgoing"), cand
    )
    assert (sent.thread_id, sent.direction, [h.rule for h in sent.rules]) == (
        1,
        "outgoing",
        ["in_reply_to_known", "sender_verified"],
    )


def test_dmarc_failure_overrides_participation() -> None:
    cand = Candidates(threads={1: _info(1, "anna@client.test")}, by_message_id={"p@x": 1})
    d = resolve(_msg(in_reply_to=("p@x",), auth=AuthVerdict(dkim="fail", dmarc="fail")), cand)
    assert (d.thread_id, d.claimed_thread_id, d.flags) == (None, 1, ("unverified",))
    assert d.rules[0].reason == "claims to reply to thread 1, but anna@client.test fails DMARC (dkim=fail)"


def test_relay_token_outweighs_other_headers() -> None:
    cand = Candidates(
        threads={1: _info(1, "anna@client.test"), 2: _info(2, "anna@client.test")}, by_message_id={"p@x": 2}
    )
    d = resolve(_msg(in_reply_to=("p@x",), relay_thread_id=1), cand)
    assert d.thread_id == 1
    assert d.rules[-1].reason == "delivered to the signed reply address of thread 1"
    assert [(h.rule, h.thread_id, h.weight) for h in d.rules] == [
        ("relay_token", 1, 100),
        ("in_reply_to_known", 2, 80),
        ("conflicting_evidence", None, 0),
        ("sender_verified", None, 0),
    ]
    assert d.rules[0].reason == "delivered to the signed reply address of thread 1"
    # A forward delivered to a reply address still follows the token (it cannot be forged).
    assert resolve(_msg(subject="Fwd: Hi", relay_thread_id=1), cand).thread_id == 1


def test_a_references_chain_into_one_thread_is_recorded_once() -> None:
    cand = Candidates(threads={1: _info(1, "anna@client.test")}, by_message_id={"a@x": 1, "b@x": 1, "c@x": 1})
    d = resolve(_msg(in_reply_to=("c@x",), references=("a@x", "b@x", "c@x"), auth=ANNA_SIGNED), cand)
    assert d.thread_id == 1
    assert [(h.rule, h.reason) for h in d.rules] == [
        ("in_reply_to_known", "In-Reply-To <c@x> is in thread 1"),
        ("references_known", "References <c@x> (1 from the end) is in thread 1 (+2 more)"),
        ("sender_verified", "DKIM pass for client.test"),
    ]


def test_a_participant_named_in_from_is_no_evidence_of_who_sent_it() -> None:
    """Unauthenticated, answering the thread's other messages (anyone who saw them can copy their
    ids): held for review, never joined as that contact."""
    cand = Candidates(threads={1: _info(1, "anna@client.test")}, by_message_id={"a1@client.test": 1})
    d = resolve(_msg(in_reply_to=("a1@client.test",)), cand)
    assert (d.thread_id, d.claimed_thread_id, d.flags) == (None, 1, ("unverified",))
    assert d.rules[0].reason == (
        "claims to reply to thread 1, but anna@client.test is a participant of thread 1 but not "
        "authenticated (dkim=none, dmarc=none) and answers none of our messages to them"
    )


def test_providers_without_dkim_thread_when_they_answer_our_own_message() -> None:
    """The decision for unsigned mail: our signed Message-ID answered by a participant, or our sent
    message answered by one of its recipients, is accepted and flagged unauthenticated."""
    ours = "mr.1.abc@company.test"
    cand = Candidates(
        threads={1: _info(1, "anna@client.test", "bob@client.test"), 2: _info(2, "carl@client.test")},
        by_message_id={"a1@client.test": 1, "sent@company.test": 1},
        own_message_ids={ours: 1},
        sent_to={"sent@company.test": frozenset({"anna@client.test"})},
    )
    signed = resolve(_msg(in_reply_to=(ours,), references=("a1@client.test", ours)), cand)
    assert (signed.thread_id, signed.flags) == (1, ("unauthenticated",))
    assert [(h.rule, h.reason) for h in signed.rules][-1] == (
        "sender_unauthenticated",
        "not authenticated (dkim=none, dmarc=none); accepted: anna@client.test is a participant of "
        f"thread 1 and answers our signed Message-ID <{ours}>",
    )
    sent = resolve(_msg(in_reply_to=("sent@company.test",)), cand)
    assert (sent.thread_id, sent.flags) == (1, ("unauthenticated",))
    assert sent.rules[-1].reason == (
        "not authenticated (dkim=none, dmarc=none); accepted: answers our message <sent@company.test>, "
        "sent to anna@client.test"
    )
    # Someone else answering them: a participant not sent that message, a stranger with our token.
    assert resolve(_msg(from_address="bob@client.test", in_reply_to=("sent@company.test",)), cand).thread_id is None
    assert resolve(_msg(from_address="eve@client.test", in_reply_to=(ours,)), cand).thread_id is None
    # Our token names thread 1; a participant of thread 2 only does not join thread 1 with it.
    assert resolve(_msg(from_address="carl@client.test", in_reply_to=(ours,)), cand).thread_id is None
    # Signed and aligned: joins as verified, no flag.
    authed = resolve(_msg(in_reply_to=("a1@client.test",), auth=ANNA_SIGNED), cand)
    assert (authed.thread_id, authed.flags, authed.rules[-1].rule) == (1, (), "sender_verified")
