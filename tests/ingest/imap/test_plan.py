from __future__ import annotations

from mailroom.ingest.imap.plan import Cursor, FolderPlan, ServerState, batches, plan_folder

FRESH = Cursor(None, None, None, 0, None, False)


def test_first_sync_newest_first_starts_backfill() -> None:
    assert plan_folder(FRESH, ServerState(7, 101, 100, 5), newest_first=True) == FolderPlan(
        reset=True, start_backfill=True, check_new=False, backfill=True
    )


def test_first_sync_oldest_first_is_plain_incremental() -> None:
    assert plan_folder(FRESH, ServerState(7, 101, 100, None), newest_first=False) == FolderPlan(
        reset=True, start_backfill=False, check_new=True, backfill=False
    )


def test_empty_folder_has_nothing_to_do() -> None:
    assert plan_folder(FRESH, ServerState(7, 1, 0, None), newest_first=True) == FolderPlan(
        reset=True, start_backfill=False, check_new=False, backfill=False
    )


def test_unchanged_uidnext_and_modseq_skip_the_search() -> None:
    cur = Cursor(7, 101, 5, 100, 1, True)
    assert plan_folder(cur, ServerState(7, 101, 100, 5), newest_first=True) == FolderPlan(
        reset=False, start_backfill=False, check_new=False, backfill=False
    )


def test_new_mail_during_backfill() -> None:
    cur = Cursor(7, 101, 5, 100, 60, False)
    assert plan_folder(cur, ServerState(7, 103, 102, 6), newest_first=True) == FolderPlan(
        reset=False, start_backfill=False, check_new=True, backfill=True
    )


def test_uidvalidity_change_resets() -> None:
    cur = Cursor(7, 101, 5, 100, 1, True)
    plan = plan_folder(cur, ServerState(8, 51, 50, None), newest_first=True)
    assert plan == FolderPlan(reset=True, start_backfill=True, check_new=False, backfill=True)


def test_batches_bounded_by_count_and_bytes() -> None:
    sizes = {1: 10, 2: 10, 3: 100, 4: 10, 5: 10, 6: 10}
    assert list(batches([1, 2, 3, 4, 5, 6], sizes, max_count=2, max_bytes=50)) == [[1, 2], [3], [4, 5], [6]]
    # A message larger than the byte bound travels alone.
    assert list(batches([3, 1], sizes, max_count=10, max_bytes=50)) == [[3], [1]]
    assert list(batches([], sizes, max_count=2, max_bytes=50)) == []
