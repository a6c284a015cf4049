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
