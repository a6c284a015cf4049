"""The pipeline's priority lane: live mail is parsed and linked before a pending backlog, and only
where that cannot change how anything is threaded."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from mailroom.conversations import pipeline
from mailroom.conversations.models import Message
from mailroom.ingest.rawstore import IncomingRaw, store_batch
from mailroom.mailboxes.models import Mailbox
from tests.conversations.mail import raw_email
from tests.factories import MailboxFactory

pytestmark = pytest.mark.django_db

OLD = datetime(2025, 1, 1, 9, 0, tzinfo=UTC)  # the backlog: months before the live mail
NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


@pytest.fixture
def backfilling(team: Any) -> Mailbox:
    return MailboxFactory(team=team, email="new.colleague@company.test")


@pytest.fixture
def idle(team: Any) -> Mailbox:
    return MailboxFactory(team=team, email="manager0@company.test")


def _store(team: Any, mailbox: Mailbox, raws: list[bytes], *, live: bool, tag: str) -> list[int]:
    items = [IncomingRaw(raw=r, key=f"{tag}:{i}") for i, r in enumerate(raws)]
    return store_batch(team_id=team.pk, kind="lmtp", mailbox=mailbox, items=items, live=live).message_pks


def _backlog(team: Any, mailbox: Mailbox, n: int = 30, **kw: Any) -> list[int]:
    raws = [
        raw_email(mid=f"old{i}@client.test", frm="client@client.test", to=mailbox.email, subject=f"Old {i}",
                  date=OLD + timedelta(hours=i), authenticated=True, **kw)
        for i in range(n)
    ]
    return _store(team, mailbox, raws, live=False, tag="backlog")


def _states(pks: list[int]) -> list[str]:
    got = dict(Message.objects.filter(pk__in=pks).values_list("pk", "state"))
    return [got[pk] for pk in pks]


def _parse_all() -> None:
    while pipeline.parse_pending():
        pass


def test_live_mail_of_an_idle_mailbox_is_parsed_and_linked_before_the_backlog_of_another(
    team: Any, backfilling: Mailbox, idle: Mailbox
) -> None:
    backlog = _backlog(team, backfilling)
    _parse_all()  # the backlog's first part is parsed, waiting to be linked ...
    more = _store(team, backfilling, [
        raw_email(mid=f"older{i}@client.test", frm="client@client.test", to=backfilling.email, subject=f"Older {i}",
                  date=OLD - timedelta(days=1, hours=i), authenticated=True)
        for i in range(5)
    ], live=False, tag="more")  # ... and more of it still to parse
    [live] = _store(team, idle, [raw_email(mid="new@client.test", frm="client@client.test", to=idle.email,
                                           subject="Вопрос по счёту", date=NOW)], live=True, tag="live")
    assert Message.objects.get(pk=live).live and not Message.objects.filter(pk__in=backlog + more, live=True).exists()

    assert pipeline.parse_pending() == 1  # the live message alone, before the five stored earlier
    assert _states([live, *more]) == ["parsed"] + ["stored"] * 5
    assert pipeline.link_pending() == 1  # the lane before 30 older parsed messages
    assert _states([live]) == ["linked"]
    assert _states(backlog) == ["parsed"] * 30
    assert _states(more) == ["stored"] * 5
    assert pipeline.link_live() == 0  # nothing live left: the ordinary order takes the rest
    assert pipeline.link_pending() == 30
    assert _states(backlog) == ["linked"] * 30


def test_without_live_mail_the_backlog_goes_in_its_order(team: Any, backfilling: Mailbox) -> None:
    backlog = _backlog(team, backfilling, 3)
    assert pipeline.link_live() == 0
    assert pipeline.parse_pending() == 3
    assert pipeline.link_live() == 0
    assert pipeline.link_pending() == 3
    assert _states(backlog) == ["linked"] * 3


def test_a_live_reply_whose_parent_is_in_the_pending_backlog_waits_and_joins_its_parents_thread(
    team: Any, backfilling: Mailbox, idle: Mailbox
) -> None:
    [parent] = _store(team, backfilling, [raw_email(
        mid="parent@client.test", frm="client@client.test", to=backfilling.email, subject="Договор", date=OLD,
        authenticated=True)], live=False, tag="parent")
    backlog = _backlog(team, backfilling, 5)
    [reply, other] = _store(team, idle, [
        raw_email(mid="reply@client.test", frm="client@client.test", to=idle.email, subject="Re: Договор",
                  date=NOW, irt="parent@client.test", refs=["parent@client.test"], authenticated=True),
        raw_email(mid="other@client.test", frm="other@client.test", to=idle.email, subject="Новый вопрос",
                  date=NOW + timedelta(minutes=1), authenticated=True),
    ], live=True, tag="live")

    assert pipeline.parse_pending() == 2  # both live ones first
    assert _states([reply, other, parent]) == ["parsed", "parsed", "stored"]
    assert pipeline.link_live() == 1  # the unrelated one; the reply's parent is not linked yet
    assert _states([reply, other]) == ["parsed", "linked"]
    _parse_all()
    assert pipeline.link_live() == 0  # its parent parsed, still not linked: it waits
    assert pipeline.link_pending() == 7  # oldest first: the parent, the backlog, the reply
    assert _states([parent, *backlog, reply]) == ["linked"] * 7
    p, r, o = (Message.objects.get(pk=pk) for pk in (parent, reply, other))
    assert r.thread_id == p.thread_id is not None
    assert o.thread_id not in (None, p.thread_id)
    assert [h["rule"] for h in r.routing["thread"]["rules"]][:1] == ["in_reply_to_known"]


def test_a_live_reply_to_a_linked_parent_goes_first_and_joins_its_thread(
    team: Any, backfilling: Mailbox, idle: Mailbox
) -> None:
    [parent] = _store(team, idle, [raw_email(
        mid="parent@client.test", frm="client@client.test", to=idle.email, subject="Договор", date=NOW,
        authenticated=True)], live=False, tag="parent")
    pipeline.drain()
    backlog = _backlog(team, backfilling, 5)
    [reply] = _store(team, idle, [raw_email(
        mid="reply@client.test", frm="client@client.test", to=idle.email, subject="Re: Договор",
        date=NOW + timedelta(hours=1), irt="parent@client.test", refs=["parent@client.test"], authenticated=True,
    )], live=True, tag="live")
    assert pipeline.parse_pending() == 1
    assert pipeline.link_live() == 1
    assert _states([reply, *backlog]) == ["linked"] + ["stored"] * 5
    assert Message.objects.get(pk=reply).thread_id == Message.objects.get(pk=parent).thread_id


@pytest.mark.parametrize(
    "case", ["same_subject", "reply_by_subject", "same_gmail_thread", "unknown_parent", "thread_index"]
)
def test_a_live_message_that_a_pending_message_could_thread_waits_for_the_ordinary_order(
    team: Any, backfilling: Mailbox, idle: Mailbox, case: str
) -> None:
    backlog = _backlog(team, backfilling, 3)
    if case == "same_gmail_thread":
        Message.objects.filter(pk=backlog[0]).update(routing_headers={"gm_thread_id": "1771"})
    raw = raw_email(
        mid="live@client.test", frm="client@client.test", to=idle.email,
        subject={"reply_by_subject": "Re: Old 1", "same_subject": "old  1"}.get(case, "Вопрос"),
        date=NOW, authenticated=True,
        irt="absent@client.test" if case == "unknown_parent" else None,
        extra={"Thread-Index": "AQHZ" + "A" * 28} if case == "thread_index" else None,
    )
    items = [IncomingRaw(raw=raw, key="live", gm_thread_id="1771" if case == "same_gmail_thread" else "")]
    [live] = store_batch(team_id=team.pk, kind="lmtp", mailbox=idle, items=items, live=True).message_pks
    assert pipeline.parse_pending() == 1
    assert pipeline.link_live() == 0
    assert _states([live]) == ["parsed"]
    _parse_all()
    assert pipeline.link_pending() == 4
    assert _states([*backlog, live]) == ["linked"] * 4


def test_an_unauthenticated_answer_to_our_message_goes_first_only_as_a_participant(
    team: Any, backfilling: Mailbox, idle: Mailbox
) -> None:
    """sender_check accepts an unauthenticated answer to our signed Message-ID from a participant of
    its thread; a pending message could have made the sender one, so a sender not yet one waits."""
    from mailroom.conversations.models import Thread
    from mailroom.core.tokens import make_message_id

    thread = Thread.objects.create(team=team, subject="Счёт", participants=["client@client.test"])
    ours = make_message_id(thread_id=thread.pk, domain="company.test")
    _backlog(team, backfilling, 2)
    [known, stranger] = _store(team, idle, [
        raw_email(mid="a@client.test", frm="client@client.test", to=idle.email, subject="Re: Счёт", date=NOW,
                  irt=ours),
        raw_email(mid="b@client.test", frm="colleague@client.test", to=idle.email, subject="Re: Счёт",
                  date=NOW + timedelta(minutes=1), irt=ours),
    ], live=True, tag="live")
    assert pipeline.parse_pending() == 2
    # Our signed Message-ID is no stored message: both wait (a reference must be a linked message).
    assert pipeline.link_live() == 0
    Message.objects.create(team=team, message_id=ours, message_id_hash=_hash(ours), content_hash="x" * 64,
                           received_at=NOW, date=NOW - timedelta(days=1), state=Message.State.LINKED,
                           thread=thread, direction=Message.Direction.OUTGOING)
    assert pipeline.link_live() == 1
    assert _states([known, stranger]) == ["linked", "parsed"]
    assert Message.objects.get(pk=known).thread_id == thread.pk


def _hash(mid: str) -> str:
    from mailroom.ingest.rawstore import message_id_hash

    return message_id_hash(mid)


@pytest.mark.django_db(transaction=False)
def test_the_engines_pipeline_links_live_mail_in_the_step_that_parses_it(team: Any, idle: Mailbox) -> None:
    """parse_first waits LINK_EVERY before linking the backlog, never before linking live mail."""
    from mailroom.ingest.engine import PipelineWorker

    worker = PipelineWorker(threading.Event(), parse_first=True)
    backlog = _store(team, idle, [raw_email(mid=f"b{i}@client.test", frm="client@client.test", to=idle.email,
                                            subject=f"B {i}", date=OLD, authenticated=True) for i in range(2)],
                     live=False, tag="b")
    assert worker.step() == 2
    assert _states(backlog) == ["parsed", "parsed"]  # not linked yet: the last link was just now
    [live] = _store(team, idle, [raw_email(mid="l@client.test", frm="client@client.test", to=idle.email,
                                           subject="L", date=NOW, authenticated=True)], live=True, tag="l")
    assert worker.step() == 2  # parsed and linked at once
    assert _states([live, *backlog]) == ["linked", "parsed", "parsed"]
    wake = threading.Event()
    assert pipeline.background_step(wake, parse_first=True) == 2  # nothing to parse: the backlog is linked
    assert _states(backlog) == ["linked", "linked"]
