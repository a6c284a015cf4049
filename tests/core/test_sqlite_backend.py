"""The SQLite backend's write lock: a waiting transaction has it as soon as the holder lets it go."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from django.db import connection, connections, transaction

from mailroom.accounts.models import Team

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _sqlite_only() -> None:
    if connection.vendor != "sqlite":
        pytest.skip("the SQLite backend's lock wait")


def test_a_waiting_writer_has_the_lock_in_the_first_gap_between_the_holders_transactions() -> None:
    """A writer that commits and begins again 15 ms later (the pipeline between two batches) leaves
    a waiting one that gap. SQLite's own busy handler, which sleeps up to 100 ms between attempts,
    missed all four gaps of this test and waited until the holder was done."""
    events: list[str] = []
    record = threading.Lock()
    holding = threading.Event()

    def note(what: str) -> None:
        with record:
            events.append(what)

    def holder() -> None:
        try:
            for i in range(1, 5):
                with transaction.atomic():
                    Team.objects.create(name=f"holder-{i}")
                    note(f"holder begins {i}")
                    holding.set()
                    time.sleep(0.15)
                note(f"holder commits {i}")
                time.sleep(0.015)
        finally:
            connections.close_all()

    def waiter() -> None:
        try:
            holding.wait(5)
            time.sleep(0.02)
            with transaction.atomic():
                note("waiter begins")
                Team.objects.create(name="waiter")
        finally:
            connections.close_all()

    threads = [threading.Thread(target=holder), threading.Thread(target=waiter)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert events[:4] == ["holder begins 1", "holder commits 1", "waiter begins", "holder begins 2"]
    assert Team.objects.filter(name__startswith="holder").count() == 4
    assert Team.objects.filter(name="waiter").count() == 1


def test_a_writer_still_gives_up_with_database_is_locked_after_its_timeout() -> None:
    from django.db import OperationalError

    from mailroom.core.sqlite_backend.base import DatabaseWrapper

    options = {**connection.settings_dict["OPTIONS"], "timeout": 0.2}
    other = DatabaseWrapper({**connection.settings_dict, "OPTIONS": options}, alias="other")
    try:
        other.ensure_connection()
        with transaction.atomic():
            Team.objects.create(name="holder")
            t = time.monotonic()
            with pytest.raises(OperationalError, match="database is locked"):
                other._start_transaction_under_autocommit()
            waited = time.monotonic() - t
        assert 0.2 <= waited < 2.0
        other._start_transaction_under_autocommit()  # free again: taken at once
        other.connection.execute("ROLLBACK")
    finally:
        other.close()


def test_a_connection_has_the_configured_page_cache(settings: Any) -> None:
    from mailroom.core.sqlite_backend.base import DatabaseWrapper

    with connection.cursor() as cur:
        cur.execute("PRAGMA cache_size")
        assert cur.fetchone()[0] == -2048
    settings.MAILROOM_SQLITE_CACHE_KIB = 8192
    other = DatabaseWrapper(connection.settings_dict, alias="other")
    try:
        other.ensure_connection()
        assert other.connection.execute("PRAGMA cache_size").fetchone()[0] == -8192
    finally:
        other.close()
