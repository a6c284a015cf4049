"""The pipeline with its parse worker processes: every message parsed and linked once."""

from __future__ import annotations

from typing import Any

import pytest

from mailroom.conversations import pipeline
from mailroom.conversations.models import Message
from mailroom.ingest.rawstore import IncomingRaw, store_batch
from mailroom.parsing.mime import parse_message
from tests.ingest.helpers import make_mail

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("processes", [0, 1])
def test_messages_are_parsed_alike_with_and_without_worker_processes(team: Any, settings: Any, processes: int) -> None:
    settings.MAILROOM_PARSE_PROCESSES = processes
    raws = [make_mail(i, subject=f"Счёт {i}", body=f"Добрый день! Письмо {i}.\n" * (i + 1)) for i in range(60)]
    res = store_batch(team_id=team.pk, kind="lmtp", items=[IncomingRaw(raw=r, key=f"k{i}") for i, r in enumerate(raws)])
    assert pipeline.drain() >= 60
    got = {m.pk: (m.state, m.subject, m.body.text) for m in Message.objects.filter(pk__in=res.message_pks).select_related("body")}
    expected = [parse_message(r) for r in raws]
    assert [got[pk] for pk in res.message_pks] == [("linked", p.subject, p.text) for p in expected]


@pytest.mark.django_db(transaction=True)
def test_beside_an_import_a_process_of_its_own_parses_and_links(team: Any, settings: Any) -> None:
    settings.MAILROOM_PARSE_PROCESSES = 1  # as on a machine with a spare core
    raws = [make_mail(i, subject=f"Заказ {i}", body=f"Письмо {i}.\n" * (i + 1)) for i in range(40)]
    with pipeline.in_background() as handled:
        for start in range(0, 40, 10):  # four commits, as an import's batches
            store_batch(
                team_id=team.pk, kind="lmtp",
                items=[IncomingRaw(raw=r, key=f"k{start + i}") for i, r in enumerate(raws[start : start + 10])],
            )
    # The child (which saw this test's database) parsed every message; the child and this process
    # linked them, one after the other: each of the 40 was counted once when parsed, once when linked.
    assert len(handled) == 2 and sum(handled) == 80
    assert list(Message.objects.order_by("id").values_list("state", "subject")) == [
        ("linked", f"Заказ {i}") for i in range(40)
    ]
    assert pipeline.drain() == 0


@pytest.mark.django_db(transaction=True)
def test_once_the_import_is_over_the_child_parses_and_this_process_links(team: Any, settings: Any) -> None:
    settings.MAILROOM_PARSE_PROCESSES = 1
    raws = [make_mail(i, subject=f"Отчёт {i}", body=f"Строка {i}.\n" * (i + 1)) for i in range(30)]
    store_batch(team_id=team.pk, kind="lmtp", items=[IncomingRaw(raw=r, key=f"k{i}") for i, r in enumerate(raws)])
    # An empty body: it is over before the child (a new interpreter setting up Django) takes a step,
    # so the child only parses (30) and this process links all of it (30).
    with pipeline.in_background() as handled:
        pass
    assert handled == [30, 30]
    assert list(Message.objects.order_by("id").values_list("state", "subject")) == [
        ("linked", f"Отчёт {i}") for i in range(30)
    ]
    assert pipeline.drain() == 0


def test_beside_an_import_parsing_comes_first_and_linking_waits_until_it_is_caught_up(team: Any) -> None:
    import threading

    raws = [make_mail(i, subject=f"Тема {i}") for i in range(5)]
    store_batch(team_id=team.pk, kind="lmtp", items=[IncomingRaw(raw=r, key=f"k{i}") for i, r in enumerate(raws)])
    wake = threading.Event()

    def states() -> list[str]:
        return list(Message.objects.order_by("id").values_list("state", flat=True))

    assert pipeline.background_step(wake, parse_first=True) == 5
    assert states() == ["parsed"] * 5  # not linked while there was parsing to do
    assert pipeline.background_step(wake, parse_first=True) == 5
    assert states() == ["linked"] * 5


def test_a_message_that_keeps_a_parser_stuck_is_quarantined_after_three_tries_and_the_rest_flows(
    team: Any, settings: Any, monkeypatch: Any
) -> None:
    """The hard deadline: the stuck worker is killed each time, the message fails one attempt a
    round, and the messages stored with it are parsed and linked in the first round."""
    from mailroom.parsing import workers
    from tests.parsing.killer import chunk_or_hang

    settings.MAILROOM_PARSE_PROCESSES = 1
    settings.MAILROOM_PARSE_DEADLINE = 1.0
    pool = workers.ParsePool(1, remote=chunk_or_hang, deadline=1.0)
    monkeypatch.setattr(workers, "_pool", pool)
    try:
        raws = [make_mail(i, subject=f"ok {i}") for i in range(5)]
        raws.insert(2, b"HANG: stuck\r\nMessage-ID: <stuck@evil.test>\r\n\r\nx\r\n")
        res = store_batch(team_id=team.pk, kind="lmtp", items=[IncomingRaw(raw=r, key=f"h{i}") for i, r in enumerate(raws)])
        stuck_pk = res.message_pks[2]
        pipeline.parse_pending()
        pipeline.link_pending()
        states = dict(Message.objects.filter(pk__in=res.message_pks).values_list("pk", "state"))
        assert [states[pk] for pk in res.message_pks] == ["linked", "linked", "stored", "linked", "linked", "linked"]
        assert pipeline.parse_pending() == 1  # the second try
        assert pipeline.parse_pending() == 1  # the third
        stuck = Message.objects.get(pk=stuck_pk)
        assert (stuck.state, stuck.attempts) == ("quarantined", 3)
        assert stuck.last_error.startswith("ParseTimeout: parsing ran past the 1 s deadline: the parser process was stopped\n")
        assert pipeline.parse_pending() == 0  # out of the way
    finally:
        pool.shutdown()


def test_a_5000_id_references_chain_is_stored_trimmed_to_first_and_last(team: Any) -> None:
    from datetime import UTC, datetime

    from mailroom.parsing.headers import MAX_REFERENCES
    from tests.conversations.mail import ingest, raw_email
    from tests.factories import MailboxFactory

    refs = [f"r{i}@client.test" for i in range(5000)]
    raw = raw_email(
        mid="long@client.test", frm="anna@client.test", subject="Re: x",
        date=datetime(2025, 6, 1, tzinfo=UTC), irt="r4999@client.test", refs=refs,
    )
    (msg,) = ingest(team, MailboxFactory(team=team), raw)
    msg.refresh_from_db()
    assert msg.state == Message.State.LINKED
    assert len(msg.references) == MAX_REFERENCES == 20
    assert msg.references == ["r0@client.test", *refs[-(MAX_REFERENCES - 1):]]
    assert msg.in_reply_to == ["r4999@client.test"]
