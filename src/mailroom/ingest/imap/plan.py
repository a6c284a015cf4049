"""Pure planning for a folder sync: server state + our cursor -> what to do. No I/O here."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Cursor:
    uidvalidity: int | None
    uidnext: int | None
    highestmodseq: int | None
    synced_high_uid: int
    backfill_low_uid: int | None
    backfill_done: bool


@dataclass(frozen=True, slots=True)
class ServerState:
    uidvalidity: int
    uidnext: int | None
    exists: int
    highestmodseq: int | None


@dataclass(frozen=True, slots=True)
class FolderPlan:
    reset: bool  # UIDVALIDITY changed (or first sync): start over for this folder
    start_backfill: bool  # first sync, newest first: pin the top and fetch downwards
    check_new: bool  # there may be UIDs above synced_high_uid
    backfill: bool  # older UIDs remain below backfill_low_uid


def plan_folder(cursor: Cursor, server: ServerState, *, newest_first: bool) -> FolderPlan:
    reset = cursor.uidvalidity != server.uidvalidity
    if reset:
        cursor = Cursor(server.uidvalidity, None, None, 0, None, False)
    fresh = cursor.synced_high_uid == 0 and cursor.backfill_low_uid is None and not cursor.backfill_done
    start_backfill = fresh and newest_first and server.exists > 0
    if fresh and not start_backfill:
        # Oldest first (or empty folder): plain incremental from UID 1; nothing to backfill.
        return FolderPlan(reset=reset, start_backfill=False, check_new=server.exists > 0, backfill=False)
    unchanged = (
        not reset
        and cursor.uidnext is not None
        and server.uidnext is not None
        and server.uidnext == cursor.uidnext
        and (server.highestmodseq is None or server.highestmodseq == cursor.highestmodseq)
    )
    check_new = not start_backfill and not unchanged and (
        server.uidnext is None or server.uidnext - 1 > cursor.synced_high_uid
    )
    return FolderPlan(
        reset=reset,
        start_backfill=start_backfill,
        check_new=check_new,
        backfill=start_backfill or not cursor.backfill_done,
    )


def batches(
    uids: Sequence[int], sizes: Mapping[int, int], *, max_count: int, max_bytes: int
) -> Iterator[list[int]]:
    """Split UIDs (in the given order) into batches bounded by count and bytes. A message larger than
    ``max_bytes`` travels alone, so memory stays bounded by max(max_bytes, largest message)."""
    batch: list[int] = []
    total = 0
    for uid in uids:
        size = sizes.get(uid, 0)
        if batch and (len(batch) >= max_count or total + size > max_bytes):
            yield batch
            batch, total = [], 0
        batch.append(uid)
        total += size
    if batch:
        yield batch
