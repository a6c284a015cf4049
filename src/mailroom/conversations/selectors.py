"""Reads for threads, timelines and folder progress: keyset (cursor) pagination on (date, id), index-backed."""

from __future__ import annotations

import base64
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db.models import Count, F, Q, QuerySet

from mailroom.conversations.models import Message, MessageContact, Participant, Source, Thread
from mailroom.core.errors import InvalidInput
from mailroom.parsing.headers import trim_references
from mailroom.routing.addresses import canonical_address
from mailroom.routing.rules import AuthVerdict
from mailroom.routing.tree import Node, TreeMessage, thread_references

MAX_LIMIT = 200
# The thread view lists a thread's messages at once; a thread longer than this shows its first ones
# (``message_count`` says how many there are). The reply tree is built without recursion, in about
# linear time, so this bounds the answer's size, not the work per message.
MAX_THREAD_MESSAGES = 5_000


def encode_cursor(date: datetime | None, pk: int) -> str:
    raw = f"{date.isoformat() if date else ''}|{pk}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> tuple[datetime | None, int] | None:
    if not cursor:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        date_s, _, pk_s = raw.partition("|")
        pk = int(pk_s)
        if not 1 <= pk <= 2**63 - 1:  # beyond 64 bits SQLite cannot even compare it
            raise ValueError(pk_s)
        return (datetime.fromisoformat(date_s) if date_s else None), pk
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput(
            "invalid cursor: pass the next_cursor of the previous page", field="cursor"
        ) from exc


def _limit(limit: int) -> int:
    if limit < 1 or limit > MAX_LIMIT:
        raise InvalidInput(f"limit must be between 1 and {MAX_LIMIT}", field="limit")
    return limit


@dataclass(frozen=True, slots=True)
class TimelineItem:
    message_id: int
    thread_id: int | None
    date: datetime | None
    direction: str
    subject: str
    from_address: str
    from_name: str
    mailboxes: tuple[int, ...]
    snippet: str


@dataclass(frozen=True, slots=True)
class Page:
    items: list[Any]
    next_cursor: str | None
    # The filtered rows the page is cut from, without the cursor (one row per listed item): what the
    # list's count counts.
    matching: QuerySet[Any]


def _items(message_ids: list[int]) -> list[TimelineItem]:
    rows = {
        r["id"]: r
        for r in Message.objects.filter(pk__in=message_ids).values(
            "id", "thread_id", "date", "direction", "subject", "from_address", "from_name", "body__reply_text"
        )
    }
    boxes: dict[int, list[int]] = {}
    for mid, box in Source.objects.filter(message_id__in=message_ids, mailbox__isnull=False).values_list(
        "message_id", "mailbox_id"
    ):
        if box not in boxes.setdefault(mid, []):
            boxes[mid].append(box)
    return [
        TimelineItem(
            message_id=r["id"],
            thread_id=r["thread_id"],
            date=r["date"],
            direction=r["direction"],
            subject=r["subject"],
            from_address=r["from_address"],
            from_name=r["from_name"],
            mailboxes=tuple(sorted(boxes.get(r["id"], ()))),
            snippet=(r["body__reply_text"] or "")[:200],
        )
        for r in (rows[m] for m in message_ids if m in rows)
    ]


def _keyset(qs: QuerySet[Any], date_field: str, id_field: str, cursor: str | None) -> QuerySet[Any]:
    pos = decode_cursor(cursor)
    if pos is None:
        return qs
    date, pk = pos
    return qs.filter(Q(**{f"{date_field}__lt": date}) | Q(**{date_field: date, f"{id_field}__lt": pk}))


def _link_page(qs: QuerySet[MessageContact], cursor: str | None, limit: int) -> Page:
    limit = _limit(limit)
    rows = list(
        _keyset(qs, "date", "message_id", cursor)
        .order_by("-date", "-message_id")
        .values_list("date", "message_id")[: limit * 3 + 1]
    )
    seen: dict[int, datetime] = {}
    for date, mid in rows:  # a company's contacts may share a message: each message once
        if mid not in seen:
            seen[mid] = date
    ids = list(seen)[:limit]
    more = len(seen) > limit or len(rows) == limit * 3 + 1
    nxt = encode_cursor(seen[ids[-1]], ids[-1]) if ids and more else None
    return Page(_items(ids), nxt, qs.values("message_id").distinct())  # each message once, as listed


def contact_timeline(*, contact_id: int, cursor: str | None = None, limit: int = 50) -> Page:
    """Every message of a contact (all mailboxes of the team, each once), newest first."""
    return _link_page(MessageContact.objects.filter(contact_id=contact_id), cursor, limit)


def company_timeline(*, company_id: int, cursor: str | None = None, limit: int = 50) -> Page:
    return _link_page(MessageContact.objects.filter(company_id=company_id), cursor, limit)


def deal_timeline(*, deal_id: int, cursor: str | None = None, limit: int = 50) -> Page:
    limit = _limit(limit)
    matching = Message.objects.filter(thread__deal_id=deal_id)
    qs = _keyset(matching, "date", "id", cursor)
    rows = list(qs.order_by("-date", "-id").values_list("date", "id")[: limit + 1])
    ids = [pk for _, pk in rows[:limit]]
    nxt = encode_cursor(rows[limit - 1][0], rows[limit - 1][1]) if len(rows) > limit else None
    return Page(_items(ids), nxt, matching)


def thread_list(
    *,
    threads: QuerySet[Thread],
    cursor: str | None = None,
    limit: int = 50,
    verification: str | None = None,
    deal_id: int | None = None,
) -> Page:
    limit = _limit(limit)
    qs = threads.filter(message_count__gt=0)
    if verification is not None:
        qs = qs.filter(verification=verification)
    if deal_id is not None:
        qs = qs.filter(deal_id=deal_id)
    rows = list(_keyset(qs, "last_message_at", "id", cursor).order_by("-last_message_at", "-id")[: limit + 1])
    nxt = encode_cursor(rows[limit - 1].last_message_at, rows[limit - 1].pk) if len(rows) > limit else None
    return Page(rows[:limit], nxt, qs)


@dataclass(frozen=True, slots=True)
class ThreadMessage:
    id: int
    message_id: str
    date: datetime | None
    direction: str
    subject: str
    from_address: str
    from_name: str
    to: tuple[str, ...]
    cc: tuple[str, ...]
    mailboxes: tuple[int, ...]
    snippet: str
    parent: int | None  # the message this one replies to inside the thread (RFC 5256 tree)
    routing: dict[str, Any] | None


def thread_messages(*, thread: Thread, limit: int = MAX_THREAD_MESSAGES) -> list[ThreadMessage]:
    """A thread's messages in date order, with the reply tree."""
    shown = Message.objects.filter(thread=thread).order_by("date", "id")
    rows = list(
        shown.values(
            "id",
            "message_id",
            "date",
            "direction",
            "subject",
            "from_address",
            "from_name",
            "body__reply_text",
            "in_reply_to",
            "references",
            "routing",
        )[:limit]
    )
    # The same messages as a subquery: thousands of ids as parameters are past SQLite's limit.
    shown_ids = shown.values("id")[:limit]
    to: dict[int, list[str]] = {}
    cc: dict[int, list[str]] = {}
    for mid, role, addr in (
        Participant.objects.filter(message_id__in=shown_ids, role__in=("to", "cc"))
        .order_by("id")
        .values_list("message_id", "role", "address")
    ):
        (to if role == "to" else cc).setdefault(mid, []).append(addr)
    boxes: dict[int, set[int]] = {}
    for mid, box in Source.objects.filter(message_id__in=shown_ids, mailbox__isnull=False).values_list(
        "message_id", "mailbox_id"
    ):
        boxes.setdefault(mid, set()).add(box)
    parents: dict[int, int | None] = {}
    roots = thread_references(
        [
            TreeMessage(
                key=r["id"],
                message_id=r["message_id"],
                references=trim_references(r["references"] or ()),  # rows stored before the cap
                in_reply_to=tuple(r["in_reply_to"] or ())[:1],
                subject="",
                date=r["date"],
            )
            for r in rows
        ]
    )
    # Iterative: a reply chain is as deep as its senders make it (a recursive walk was a 500).
    stack: list[tuple[Node, int | None]] = [(root, None) for root in reversed(roots)]
    while stack:
        node, parent = stack.pop()
        key = node.key
        if key is not None:
            parents[key] = parent
        below = key if key is not None else parent
        stack.extend((c, below) for c in reversed(node.children))
    return [
        ThreadMessage(
            id=r["id"],
            message_id=r["message_id"],
            date=r["date"],
            direction=r["direction"],
            subject=r["subject"],
            from_address=r["from_address"],
            from_name=r["from_name"],
            to=tuple(to.get(r["id"], ())),
            cc=tuple(cc.get(r["id"], ())),
            mailboxes=tuple(sorted(boxes.get(r["id"], ()))),
            snippet=(r["body__reply_text"] or "")[:200],
            parent=parents.get(r["id"]),
            routing=r["routing"],
        )
        for r in rows
    ]


# --- who sent it: what a reader is warned of ---------------------------------------------------------
@dataclass(frozen=True, slots=True)
class MessageWarning:
    code: str  # "unverified", "unauthenticated", "suspicious", "reply_to_differs"
    message: str


def routing_flags(message: Message) -> set[str]:
    """The resolver's flags recorded on the message (``unverified``, ``unauthenticated``, ...)."""
    thread = (message.routing or {}).get("thread")
    return set(thread.get("flags") or ()) if isinstance(thread, dict) else set()


def _authenticated(message: Message) -> bool:
    return AuthVerdict.from_json(message.auth).authenticates(message.from_address)[0]


def reply_to_risk(message: Message, participants: list[Participant] | None = None) -> tuple[list[str], str] | None:
    """(Reply-To addresses, From) when an incoming message that is not authenticated asks for
    replies to go elsewhere than its From: anyone can write a client's From and his own Reply-To,
    so a reply from the CRM to it needs the user's explicit choice. None otherwise."""
    if message.direction == Message.Direction.OUTGOING:
        return None
    parts = participants if participants is not None else list(message.participants.all())
    sender = canonical_address(message.from_address) if message.from_address else ""
    reply_to = [p.address for p in parts if p.role == Participant.Role.REPLY_TO]
    if not reply_to or all(canonical_address(a) == sender for a in reply_to):
        return None
    if _authenticated(message) and not routing_flags(message) & {"unverified", "suspicious"}:
        return None
    return reply_to, message.from_address


def message_warnings(message: Message, participants: list[Participant] | None = None) -> list[MessageWarning]:
    """What the reader of this message must know about who sent it (shown above the message).
    ``participants=[]`` leaves out the Reply-To check (and its query)."""
    out: list[MessageWarning] = []
    flags = routing_flags(message)
    if "suspicious" in flags:
        out.append(MessageWarning(
            "suspicious",
            f"From {message.from_address} is one of our own addresses, but the message is not authenticated "
            "and was not found in a Sent folder",
        ))
    if "unverified" in flags:
        out.append(MessageWarning(
            "unverified",
            f"held for review: nothing shows that {message.from_address or 'the sender'} sent it "
            "(no DKIM/DMARC pass, and it answers none of our messages to them)",
        ))
    elif "unauthenticated" in flags:
        out.append(MessageWarning(
            "unauthenticated",
            f"{message.from_address} is not authenticated (no DKIM/DMARC pass); it is in this thread because "
            "it answers our own message to them",
        ))
    risk = reply_to_risk(message, participants)
    if risk is not None:
        reply_to, sender = risk
        out.append(MessageWarning(
            "reply_to_differs",
            f"Reply-To {', '.join(reply_to)} differs from From {sender} and the sender is not authenticated: "
            "a reply must choose one (reply_to_choice: from or reply_to)",
        ))
    return out


@dataclass(frozen=True, slots=True)
class FolderProgress:
    """How far a folder's stored mail has come through the pipeline, in UIDs of its current
    UIDVALIDITY (the unit of ``Folder.stored_count`` and ``server_count``, so the three compare)."""

    linked: int = 0
    quarantined: int = 0


NO_PROGRESS = FolderProgress()


def folder_progress(*, mailbox_ids: Iterable[int]) -> dict[int, FolderProgress]:
    """Linked and quarantined counts of every folder of these mailboxes, by folder id, in one grouped
    query (a mailbox list shows many folders; a query per folder would be a query per row). A folder
    with neither is absent: use ``NO_PROGRESS``. Sources of an older UIDVALIDITY are left out, as
    ``stored_count`` leaves them out after the folder restarts."""
    rows = (
        Source.objects.filter(
            folder__mailbox_id__in=list(mailbox_ids),
            kind=Source.Kind.IMAP,
            uidvalidity=F("folder__uidvalidity"),
            message__state__in=(Message.State.LINKED, Message.State.QUARANTINED),
        )
        .order_by()
        .values_list("folder_id", "message__state")
        .annotate(n=Count("pk"))
    )
    counts: dict[int, dict[str, int]] = {}
    for folder_id, state, n in rows:
        counts.setdefault(folder_id, {})[state] = n
    return {
        folder_id: FolderProgress(linked=c.get(Message.State.LINKED, 0), quarantined=c.get(Message.State.QUARANTINED, 0))
        for folder_id, c in counts.items()
    }
