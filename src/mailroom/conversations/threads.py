"""User actions on threads: merge, split a message out, accept or reject an unverified claim, set
the deal. Each is one transaction; placements make the users' decisions survive routing replays."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models import BigIntegerField, Case, Count, Max, Min, Value, When

from mailroom.conversations.models import (
    Message,
    MessagePlacement,
    Participant,
    Thread,
    ThreadAlias,
)
from mailroom.core.errors import Conflict, InvalidInput
from mailroom.crm.models import Deal
from mailroom.routing.addresses import canonical_address


def threads_refresh(*, thread_ids: list[int]) -> None:
    """Recompute counts, dates and participants of threads from their messages."""
    stats = {
        r["thread_id"]: r
        for r in Message.objects.filter(thread_id__in=thread_ids)
        .values("thread_id")
        .annotate(n=Count("id"), first=Min("date"), last=Max("date"))
    }
    people: dict[int, set[str]] = {t: set() for t in thread_ids}
    for tid, addr in Participant.objects.filter(
        message__thread_id__in=thread_ids, role__in=("from", "to", "cc")
    ).values_list("message__thread_id", "address"):
        people[tid].add(canonical_address(addr))
    for thread in Thread.objects.filter(pk__in=thread_ids):
        s = stats.get(thread.pk)
        thread.message_count = s["n"] if s else 0
        thread.first_message_at = s["first"] if s else None
        thread.last_message_at = s["last"] if s else None
        thread.participants = sorted(people.get(thread.pk, ()))
        thread.save(update_fields=["message_count", "first_message_at", "last_message_at", "participants"])


def _place(message_ids: list[int], thread: Thread, reason: str, user: Any) -> None:
    MessagePlacement.objects.filter(message_id__in=message_ids).delete()
    MessagePlacement.objects.bulk_create(
        [
            MessagePlacement(message_id=m, thread=thread, reason=reason, created_by=_user(user))
            for m in message_ids
        ]
    )


def thread_refs_follow_merge(*, survivors: dict[int, int]) -> None:
    """Point what other packages hang on absorbed threads at their survivors (``survivors``: absorbed
    id -> survivor id) before the absorbed are deleted: a relay token (``reply+<token>@``) would
    otherwise be deleted with its thread (its foreign key cascades) and the client's next reply
    through it would lose its thread; outbox rows would lose theirs."""
    from mailroom.outbound.models import OutboxMessage, RelayToken

    repoint(RelayToken, "thread_id", survivors)
    repoint(OutboxMessage, "thread_id", survivors)


def repoint(model: Any, field: str, survivors: dict[int, int]) -> None:
    """Set ``field`` (a thread id) of ``model``'s rows from each absorbed thread to its survivor: one
    UPDATE for any number of merges (``CASE field WHEN absorbed THEN survivor ...``)."""
    if not survivors:
        return
    absorbed = list(survivors)
    for i in range(0, len(absorbed), 300):  # three bound parameters a merge; SQLite's limit may be 999
        chunk = absorbed[i : i + 300]
        case = Case(*(When(**{field: a}, then=Value(survivors[a])) for a in chunk), output_field=BigIntegerField())
        model.objects.filter(**{f"{field}__in": chunk}).update(**{field: case})


def _user(user: Any) -> Any:
    return user if getattr(user, "is_authenticated", False) else None


@transaction.atomic
def thread_merge(
    *, survivor: Thread, absorbed: Thread, user: Any, reason: str = MessagePlacement.Reason.MERGE
) -> Thread:
    """Move every message of ``absorbed`` into ``survivor``; references to the absorbed thread (our
    Message-IDs, aliases, claims) resolve to the survivor from now on."""
    if survivor.pk == absorbed.pk:
        raise InvalidInput("cannot merge a thread into itself", field="thread_id")
    if survivor.team_id != absorbed.team_id:
        raise InvalidInput("threads belong to different teams", field="thread_id")
    moved = list(Message.objects.filter(thread=absorbed).values_list("id", flat=True))
    Message.objects.filter(pk__in=moved).update(thread=survivor)
    _place(moved, survivor, reason, user)
    MessagePlacement.objects.filter(thread=absorbed).update(thread=survivor)
    ThreadAlias.objects.filter(survivor=absorbed).update(survivor=survivor)
    ThreadAlias.objects.update_or_create(
        absorbed_id=absorbed.pk,
        defaults={"team_id": survivor.team_id, "survivor": survivor, "created_by": _user(user)},
    )
    Thread.objects.filter(claimed_thread=absorbed).update(claimed_thread=survivor)
    thread_refs_follow_merge(survivors={absorbed.pk: survivor.pk})
    if survivor.deal_id is None and absorbed.deal_id is not None:
        survivor.deal_id, survivor.deal_source = absorbed.deal_id, absorbed.deal_source
        survivor.save(update_fields=["deal", "deal_source"])
    absorbed.delete()
    threads_refresh(thread_ids=[survivor.pk])
    survivor.refresh_from_db()
    return survivor


@transaction.atomic
def thread_split_message(*, message: Message, user: Any) -> Thread:
    """Take one message out of its thread into a new thread of its own (sticks across replays)."""
    old = message.thread
    if old is None:
        raise InvalidInput("the message is in no thread yet", field="message_id")
    if Message.objects.filter(thread=old).count() < 2:
        raise Conflict("the message is the only one of its thread: nothing to split")
    from mailroom.routing.subjects import normalize_subject

    new = Thread.objects.create(
        team_id=old.team_id,
        subject=message.subject[:1000],
        normalized_subject=normalize_subject(message.subject),
        deal_id=old.deal_id,
        deal_source=old.deal_source,
    )
    Message.objects.filter(pk=message.pk).update(thread=new)
    _place([message.pk], new, MessagePlacement.Reason.SPLIT, user)
    threads_refresh(thread_ids=[old.pk, new.pk])
    new.refresh_from_db()
    return new


def thread_accept(*, thread: Thread, user: Any) -> Thread:
    """Accept an unverified thread: merge it into the thread it claims to reply to and put its sender
    on the contact's card."""
    if thread.verification != Thread.Verification.UNVERIFIED:
        raise Conflict(f"thread {thread.pk} is not waiting for verification")
    claimed = Thread.objects.filter(pk=thread.claimed_thread_id).first() if thread.claimed_thread_id else None
    if claimed is None:
        raise Conflict(f"the thread that thread {thread.pk} claimed no longer exists; reject it instead")
    pks = list(Message.objects.filter(thread=thread).values_list("id", flat=True))
    with transaction.atomic():
        survivor = thread_merge(
            survivor=claimed, absorbed=thread, user=user, reason=MessagePlacement.Reason.ACCEPTED
        )
        from mailroom.conversations.linking import messages_link

        messages_link(message_pks=pks)  # placements win; the sender is now linked to his contact
    survivor.refresh_from_db()
    return survivor


@transaction.atomic
def thread_reject(*, thread: Thread, user: Any) -> Thread:
    if thread.verification != Thread.Verification.UNVERIFIED:
        raise Conflict(f"thread {thread.pk} is not waiting for verification")
    thread.verification = Thread.Verification.REJECTED
    thread.save(update_fields=["verification"])
    return thread


@transaction.atomic
def thread_set_deal(*, thread: Thread, deal: Deal | None, user: Any) -> Thread:
    """A user's choice of deal for a thread (None: on no deal). It sticks for the thread."""
    if deal is not None and deal.team_id != thread.team_id:
        raise InvalidInput("the deal belongs to another team", field="deal_id")
    thread.deal = deal
    thread.deal_source = Thread.DealSource.USER
    thread.deal_candidates = []
    thread.save(update_fields=["deal", "deal_source", "deal_candidates"])
    return thread
