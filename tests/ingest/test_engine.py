"""Several sync engines sharing the mailboxes, in one process on the real database and Dovecot: the
test drives each engine's reconcile itself (distinct owners), so who holds what is exact."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from mailroom.conversations.models import Message, Source
from mailroom.ingest.engine import SyncEngine
from mailroom.ingest.models import EngineNode
from mailroom.mailboxes.models import Mailbox
from tests.ingest.helpers import mailbox_for, make_mail

pytestmark = pytest.mark.django_db(transaction=True)

PER_MAILBOX = 20


def _until(predicate: Callable[[], bool], timeout: float, step: Callable[[], None] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        if step is not None:
            step()
        time.sleep(0.05)


@pytest.fixture
def engines(settings: Any) -> Iterator[Callable[[], SyncEngine]]:
    """Engines made by the test, stopped at its end. The lease outlives the test: nothing here
    expires, every change of hands is a rebalancing."""
    settings.MAILROOM_LEASE_SECONDS = 120
    made: list[SyncEngine] = []

    def make() -> SyncEngine:
        engine = SyncEngine(idle_seconds=0.5)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.stop()


@pytest.fixture
def mailboxes(mail_user: Any) -> list[int]:
    ids = []
    for _ in range(6):
        user = mail_user()
        user.dovecot.deliver_many(user.email, [make_mail(i) for i in range(PER_MAILBOX)])
        ids.append(mailbox_for(user, sync_roles=["inbox"]).pk)
    return sorted(ids)


def held(engine: SyncEngine) -> list[int]:
    return sorted(Mailbox.objects.filter(lease_owner=engine.owner).values_list("id", flat=True))


def running(engine: SyncEngine) -> list[int]:
    return sorted(mid for mid, r in engine.runners.items() if r.is_alive())


def settle(engine: SyncEngine, expected: list[int]) -> None:
    """Reconcile until ``engine`` holds and runs ``expected`` (a hand-back waits for its runners)."""
    _until(lambda: held(engine) == expected and running(engine) == expected, 30, engine.reconcile)


def test_a_single_engine_takes_every_mailbox(engines: Any, mailboxes: list[int]) -> None:
    a = engines()
    a.reconcile()
    assert held(a) == mailboxes
    assert running(a) == mailboxes
    assert list(EngineNode.objects.values_list("owner", flat=True)) == [a.owner]
    _until(lambda: Source.objects.count() == 6 * PER_MAILBOX, 60)


def test_a_new_engine_gets_its_share_the_old_one_hands_back_its_highest_ids(engines: Any, mailboxes: list[int]) -> None:
    a, b = engines(), engines()
    a.reconcile()
    assert held(a) == mailboxes
    b.reconcile()  # registered: two live engines, a share of 3 each; but nothing is free yet
    assert (held(b), EngineNode.objects.count()) == ([], 2)
    settle(a, mailboxes[:3])  # stops the runners of the three highest ids, then releases them
    assert Mailbox.objects.filter(pk__in=mailboxes[3:], lease_owner="").count() == 3
    b.reconcile()
    assert (held(b), running(b)) == (mailboxes[3:], mailboxes[3:])

    c = engines()
    c.reconcile()  # three live engines: a share of 2
    assert held(c) == []
    settle(a, mailboxes[:2])
    settle(b, mailboxes[3:5])
    c.reconcile()
    assert (held(c), running(c)) == ([mailboxes[2], mailboxes[5]], [mailboxes[2], mailboxes[5]])
    for engine in (a, b, c):  # stable: a fair split is left alone
        engine.reconcile()
    assert (held(a), held(b), held(c)) == (mailboxes[:2], mailboxes[3:5], [mailboxes[2], mailboxes[5]])

    c.stop()  # a clean stop: its row and its leases are gone at once
    assert EngineNode.objects.filter(owner=c.owner).count() == 0
    assert Mailbox.objects.filter(lease_owner="").count() == 2
    a.reconcile()
    b.reconcile()
    assert (held(a), held(b)) == ([*mailboxes[:3]], [*mailboxes[3:]])

    # Every message once, whoever imported which part of it.
    _until(lambda: Source.objects.count() == 6 * PER_MAILBOX, 60)
    assert Message.objects.count() == 6 * PER_MAILBOX
    for mid in mailboxes:
        assert Source.objects.filter(mailbox_id=mid).count() == PER_MAILBOX


def test_an_engine_takes_over_the_mailboxes_of_a_dead_one(engines: Any, mailboxes: list[int], settings: Any) -> None:
    from datetime import timedelta

    from django.utils import timezone

    a, b = engines(), engines()
    a.reconcile()
    b.reconcile()
    settle(a, mailboxes[:3])
    b.reconcile()
    assert held(b) == mailboxes[3:]
    # b is killed: no more heartbeats, its leases run out (a lease time later: made so here).
    for runner in b.runners.values():
        runner.halt()
    for runner in b.runners.values():
        runner.join(30)
    past = timezone.now() - timedelta(seconds=1)
    Mailbox.objects.filter(lease_owner=b.owner).update(lease_expires_at=past)
    EngineNode.objects.filter(owner=b.owner).update(
        heartbeat_at=timezone.now() - timedelta(seconds=settings.MAILROOM_LEASE_SECONDS + 1)
    )
    a.reconcile()
    assert held(a) == mailboxes
    assert list(EngineNode.objects.values_list("owner", flat=True)) == [a.owner]
    _until(lambda: Source.objects.count() == 6 * PER_MAILBOX, 60)
    assert Message.objects.count() == 6 * PER_MAILBOX


@pytest.mark.django_db(transaction=False)
def test_pipeline_worker_parse_first_links_when_parsing_caught_up_or_every_few_seconds(
    team: Any, settings: Any
) -> None:
    """The engine's pipeline process parses first: linking's long write transaction waits while
    there is mail to parse, but never longer than LINK_EVERY."""
    import threading

    from mailroom.ingest import engine as engine_module
    from mailroom.ingest.engine import PipelineWorker
    from mailroom.ingest.rawstore import IncomingRaw, store_batch

    settings.MAILROOM_PARSE_PROCESSES = 0

    def store(start: int) -> list[int]:
        items = [IncomingRaw(raw=make_mail(i), key=f"k{i}") for i in range(start, start + 2)]
        return store_batch(team_id=team.pk, kind="lmtp", items=items).message_pks

    def states(pks: list[int]) -> list[str]:
        return [Message.objects.get(pk=pk).state for pk in pks]

    worker = PipelineWorker(threading.Event(), parse_first=True)
    first = store(0)
    assert worker.step() == 2  # parsed; the last link was just now: not linked yet
    assert states(first) == ["parsed", "parsed"]
    assert worker.step() == 2  # nothing left to parse: linked
    assert states(first) == ["linked", "linked"]
    second = store(2)
    worker._linked_at -= engine_module.LINK_EVERY  # a backlog to parse, but the last link is old
    assert worker.step() == 4  # parsed two, linked two
    assert states(second) == ["linked", "linked"]


def test_sync_slots_give_announced_mail_the_next_free_slot_before_the_polls_waiting() -> None:
    """The runner woken by IDLE takes the slot freed next, though runners waiting to poll came first."""
    import threading
    import time

    from mailroom.ingest.imap.worker import SyncSlots

    slots = SyncSlots(1)
    slots.acquire()  # a runner syncing
    order: list[str] = []
    lock = threading.Lock()

    def runner(name: str, urgent: bool) -> None:
        slots.acquire(urgent=urgent)
        with lock:
            order.append(name)
        time.sleep(0.02)
        slots.release()

    polls = [threading.Thread(target=runner, args=(f"poll{i}", False)) for i in range(3)]
    for t in polls:
        t.start()
    time.sleep(0.1)  # the polls wait first
    announced = threading.Thread(target=runner, args=("announced", True))
    announced.start()
    time.sleep(0.1)
    slots.release()
    for t in [*polls, announced]:
        t.join(5)
    assert order[0] == "announced"
    assert sorted(order[1:]) == ["poll0", "poll1", "poll2"]
    assert slots._free == 1  # every slot given back
