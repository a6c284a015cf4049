"""Routing values and the named threading rules. Pure: frozen dataclasses in, hits out; no ORM.

Each rule looks at one kind of evidence and returns :class:`RuleHit` values naming the thread it points
to, a weight (how strong the evidence is) and a human reason. The resolver weighs all hits together.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from mailroom.parsing.authn import aligned
from mailroom.routing.addresses import canonical_address, domain_of
from mailroom.routing.subjects import is_forward, is_reply, normalize_subject
from mailroom.routing.threadindex import conversation_id

INCOMING = "incoming"
OUTGOING = "outgoing"

# Weights: how much each kind of evidence is worth. Signed tokens cannot be forged; the direct parent
# (In-Reply-To) beats older References; provider conversation ids beat shared references.
W_OWN_MESSAGE_ID = 100
W_RELAY_TOKEN = 100
W_SAME_MESSAGE_ID = 90
W_IN_REPLY_TO = 80
W_REFERENCES = 70  # minus 1 per step back in the chain (at most 20)
W_GMAIL_THREAD = 60
W_REFERENCED_BY_THREAD = 50
W_THREAD_INDEX = 45
W_SHARED_REFERENCE = 40
W_SUBJECT = 20

DEFAULT_SUBJECT_WINDOW = timedelta(days=30)


@dataclass(frozen=True, slots=True)
class AuthVerdict:
    """The DKIM/DMARC verdict produced by parsing (``Message.auth``)."""

    dkim: str = "none"
    dmarc: str = "none"
    dkim_domains: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> AuthVerdict:
        if not data:
            return cls()
        domains = data.get("dkim_domains") or ()
        return cls(
            dkim=str(data.get("dkim") or "none").lower(),
            dmarc=str(data.get("dmarc") or "none").lower(),
            dkim_domains=tuple(str(d).lower() for d in domains),
        )

    def authenticates(self, address: str) -> tuple[bool, str]:
        """Whether the verdict vouches for ``address``'s domain (the From domain), with the reason.

        DMARC is evaluated by parsing against the From domain (a valid DKIM signature aligned with it,
        or a trusted ``Authentication-Results: dmarc=pass``); otherwise a valid DKIM signature whose
        d= is aligned (same organizational domain) with ``address``'s domain."""
        if self.dmarc == "pass":
            return True, "DMARC pass"
        domain = domain_of(address)
        if self.dkim == "pass" and domain:
            for d in self.dkim_domains:
                if aligned(d, domain):
                    return True, f"DKIM pass for {d}"
        return False, f"dkim={self.dkim}, dmarc={self.dmarc}"

    @property
    def failed(self) -> bool:
        """The From domain's DMARC check failed: the sender is forged, whoever it claims to be."""
        return self.dmarc == "fail"


@dataclass(frozen=True, slots=True)
class RoutingInput:
    """What routing needs to know about one message."""

    message_id: str
    in_reply_to: tuple[str, ...] = ()
    references: tuple[str, ...] = ()
    subject: str = ""
    from_address: str = ""
    to: tuple[str, ...] = ()
    cc: tuple[str, ...] = ()
    date: datetime | None = None
    auth: AuthVerdict = field(default_factory=AuthVerdict)
    thread_index: str = ""
    gm_thrid: str = ""
    is_auto_reply: bool = False
    is_bulk: bool = False
    direction: str = INCOMING  # outgoing only for a Sent-folder copy or our outbox (never from From)
    # The thread of the relay token (``reply+<token>@``) the message was delivered to over LMTP.
    relay_thread_id: int | None = None
    # Who sent it cannot be told (several From headers, or several From addresses and no Sender).
    from_ambiguous: str = ""

    @property
    def referenced_ids(self) -> tuple[str, ...]:
        """In-Reply-To first, then References from the nearest to the oldest, without repeats."""
        return tuple(dict.fromkeys((*self.in_reply_to, *reversed(self.references))))

    @property
    def addresses(self) -> frozenset[str]:
        return frozenset(canonical_address(a) for a in (self.from_address, *self.to, *self.cc) if a)


@dataclass(frozen=True, slots=True)
class ThreadInfo:
    thread_id: int
    participants: frozenset[str] = frozenset()  # canonical addresses of every message's from/to/cc
    last_message_at: datetime | None = None
    normalized_subject: str = ""


@dataclass(frozen=True, slots=True)
class Candidates:
    """Known threads for the evidence in a message, loaded by the service (already merge-resolved)."""

    threads: Mapping[int, ThreadInfo] = field(default_factory=dict)
    # Referenced ids that are our own signed Message-IDs -> the thread they name (after merges).
    own_message_ids: Mapping[str, int] = field(default_factory=dict)
    # Message-ID -> thread of a stored message (other than this one) with that Message-ID.
    by_message_id: Mapping[str, int] = field(default_factory=dict)
    # Message-ID -> threads whose messages reference it.
    referenced_by: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    by_thread_index: Mapping[str, int] = field(default_factory=dict)  # conversation id -> thread
    by_gm_thrid: Mapping[str, int] = field(default_factory=dict)
    by_subject: tuple[int, ...] = ()  # threads with the same normalised subject, most recent first
    own_addresses: frozenset[str] = frozenset()  # canonical addresses of the team's mailboxes and users
    # Referenced Message-ID of our own outgoing message (sent from the CRM or found in a Sent folder)
    # -> the canonical addresses it was sent to: who may answer it without authentication.
    sent_to: Mapping[str, frozenset[str]] = field(default_factory=dict)
    override_thread: int | None = None  # a user put the message there (split, merge, accept): it sticks
    subject_window: timedelta = DEFAULT_SUBJECT_WINDOW


@dataclass(frozen=True, slots=True)
class RuleHit:
    rule: str
    reason: str
    thread_id: int | None = None
    weight: int = 0

    def as_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"rule": self.rule, "reason": self.reason}
        if self.thread_id is not None:
            data["thread"] = self.thread_id
            data["weight"] = self.weight
        return data


# --- header rules --------------------------------------------------------------------------------------
def own_message_id(msg: RoutingInput, cand: Candidates) -> list[RuleHit]:
    return [
        RuleHit(
            "own_message_id",
            f"references our signed Message-ID <{mid}> of thread {cand.own_message_ids[mid]}",
            cand.own_message_ids[mid],
            W_OWN_MESSAGE_ID,
        )
        for mid in msg.referenced_ids
        if mid in cand.own_message_ids
    ]


def relay_token(msg: RoutingInput, cand: Candidates) -> list[RuleHit]:
    """Delivered over LMTP to a signed reply address (the relay checked the token and the sender)."""
    t = msg.relay_thread_id
    if t is None:
        return []
    return [RuleHit("relay_token", f"delivered to the signed reply address of thread {t}", t, W_RELAY_TOKEN)]


def same_message_id(msg: RoutingInput, cand: Candidates) -> list[RuleHit]:
    t = cand.by_message_id.get(msg.message_id)
    if t is None:
        return []
    return [
        RuleHit(
            "same_message_id", f"another copy of <{msg.message_id}> is in thread {t}", t, W_SAME_MESSAGE_ID
        )
    ]


def in_reply_to_known(msg: RoutingInput, cand: Candidates) -> list[RuleHit]:
    hits = []
    for mid in msg.in_reply_to:
        t = cand.by_message_id.get(mid)
        if t is not None:
            hits.append(
                RuleHit("in_reply_to_known", f"In-Reply-To <{mid}> is in thread {t}", t, W_IN_REPLY_TO)
            )
    return hits


def references_known(msg: RoutingInput, cand: Candidates) -> list[RuleHit]:
    hits = []
    for back, mid in enumerate(reversed(msg.references)):
        t = cand.by_message_id.get(mid)
        if t is not None:
            hits.append(
                RuleHit(
                    "references_known",
                    f"References <{mid}> ({back + 1} from the end) is in thread {t}",
                    t,
                    W_REFERENCES - min(back, 20),
                )
            )
    return hits


def referenced_by_thread(msg: RoutingInput, cand: Candidates) -> list[RuleHit]:
    """Replies stored before their parent: a thread's messages reference this message."""
    return [
        RuleHit(
            "referenced_by_thread",
            f"messages of thread {t} reference <{msg.message_id}>",
            t,
            W_REFERENCED_BY_THREAD,
        )
        for t in cand.referenced_by.get(msg.message_id, ())
    ]


def shared_reference(msg: RoutingInput, cand: Candidates) -> list[RuleHit]:
    """Siblings: this message and a thread's messages reference the same (unstored) message."""
    hits = []
    for mid in msg.referenced_ids:
        if mid in cand.by_message_id:
            continue
        for t in cand.referenced_by.get(mid, ()):
            hits.append(
                RuleHit("shared_reference", f"thread {t} also references <{mid}>", t, W_SHARED_REFERENCE)
            )
    return hits


def thread_index(msg: RoutingInput, cand: Candidates) -> list[RuleHit]:
    conv = conversation_id(msg.thread_index)
    t = cand.by_thread_index.get(conv) if conv else None
    if t is None:
        return []
    return [
        RuleHit(
            "thread_index", f"Outlook Thread-Index conversation {conv[:12]}… is thread {t}", t, W_THREAD_INDEX
        )
    ]


def gmail_thread(msg: RoutingInput, cand: Candidates) -> list[RuleHit]:
    t = cand.by_gm_thrid.get(msg.gm_thrid) if msg.gm_thrid else None
    if t is None:
        return []
    return [RuleHit("gmail_thread_id", f"Gmail X-GM-THRID {msg.gm_thrid} is thread {t}", t, W_GMAIL_THREAD)]


HEADER_RULES = (
    own_message_id,
    relay_token,
    same_message_id,
    in_reply_to_known,
    references_known,
    gmail_thread,
    referenced_by_thread,
    thread_index,
    shared_reference,
)
STRONG_RULES = frozenset({"own_message_id", "relay_token"})


# --- fallback and checks ---------------------------------------------------------------------------------
def _shared_participants(msg: RoutingInput, info: ThreadInfo, own: frozenset[str]) -> frozenset[str]:
    if msg.direction == OUTGOING:
        mine = frozenset(canonical_address(a) for a in (*msg.to, *msg.cc))
    else:
        mine = frozenset({canonical_address(msg.from_address)}) if msg.from_address else frozenset()
    return (mine & info.participants) - own


def subject_fallback(msg: RoutingInput, cand: Candidates) -> RuleHit | None:
    """Same normalised subject + shared participants within the time window, for a reply-looking
    message without any known header evidence."""
    norm = normalize_subject(msg.subject)
    if not norm or is_forward(msg.subject):
        return None
    if not (is_reply(msg.subject) or msg.in_reply_to or msg.references):
        return None
    for t in cand.by_subject:
        info = cand.threads.get(t)
        if info is None or info.normalized_subject != norm:
            continue
        if msg.date and info.last_message_at and abs(msg.date - info.last_message_at) > cand.subject_window:
            continue
        shared = _shared_participants(msg, info, cand.own_addresses)
        if not shared:
            continue
        days = cand.subject_window.days
        return RuleHit(
            "subject_participants",
            f"subject {norm!r} and participant(s) {', '.join(sorted(shared))} match thread {t} within {days} days",
            t,
            W_SUBJECT,
        )
    return None


# --- direction -------------------------------------------------------------------------------------------
def own_from(msg: RoutingInput, own: frozenset[str]) -> RuleHit | None:
    """An incoming copy whose From is one of the team's own addresses: outgoing when the From domain is
    authenticated (a copy of our mail that came back: Cc, Bcc, a colleague's INBOX), else suspicious
    (anyone can write ``From: manager@company``). ``None`` when From is not ours or the copy is
    already outgoing (Sent folder, our outbox)."""
    if msg.direction == OUTGOING or not msg.from_address:
        return None
    if canonical_address(msg.from_address) not in own:
        return None
    ok, why = msg.auth.authenticates(msg.from_address)
    if ok:
        return RuleHit(
            "own_address_authenticated",
            f"From {msg.from_address} is one of the team's addresses ({why}): outgoing",
        )
    return RuleHit(
        "own_address_unauthenticated",
        f"From {msg.from_address} is one of the team's addresses but the message is not authenticated "
        f"({why}) and was not found in a Sent folder: kept incoming, suspicious",
    )


@dataclass(frozen=True, slots=True)
class SenderCheck:
    """May this message join a thread as its sender? ``unauthenticated``: accepted on what it
    references, without DKIM/DMARC (flagged so, and said so in the message's reasons)."""

    ok: bool
    why: str
    unauthenticated: bool = False


def sender_check(msg: RoutingInput, info: ThreadInfo | None, cand: Candidates) -> SenderCheck:
    """Anti-spoofing: being named in a thread's headers is no evidence of who sent a message.

    Incoming mail joins a thread as its sender on evidence an attacker cannot copy:

    - an authenticated sender: a valid DKIM signature aligned with the From domain, or DMARC pass
      (our own check or a trusted receiving server's);
    - the relay's signed reply address of that thread (the relay checked the token and the sender);
    - or, for providers that do not sign (decided so that ordinary correspondence still threads):
      one of *our own* messages of that thread referenced in In-Reply-To/References, by a sender
      consistent with it: our signed Message-ID (``mr.…``) and a participant of the thread, or the
      Message-ID of our outgoing message (CRM or Sent folder) that was sent to this very address.
      Such a message is accepted but flagged ``unauthenticated``.

    Never: a sender whose domain fails DMARC at a trusted server, an unauthenticated incoming
    message claiming one of our own addresses, mail whose sender cannot be told, or a participant
    referencing only other people's messages (anyone who saw the thread can copy those)."""
    if msg.direction == OUTGOING:
        return SenderCheck(True, "outgoing mail of the team")
    if msg.from_ambiguous:
        return SenderCheck(False, f"who sent it cannot be told ({msg.from_ambiguous})")
    sender = canonical_address(msg.from_address) if msg.from_address else ""
    who = msg.from_address or "the sender"
    if msg.auth.failed:
        return SenderCheck(False, f"{who} fails DMARC (dkim={msg.auth.dkim})")
    if sender and sender in cand.own_addresses:
        return SenderCheck(False, f"{who} is one of the team's addresses, unauthenticated, not from a Sent folder")
    ok, why = msg.auth.authenticates(msg.from_address)
    if ok:
        return SenderCheck(True, why)
    if info is None or not sender:
        return SenderCheck(False, f"{who} is not authenticated ({why})")
    t = info.thread_id
    if msg.relay_thread_id == t:
        return SenderCheck(True, f"delivered to the signed reply address of thread {t}")
    participant = sender in info.participants
    for mid in msg.referenced_ids:
        if participant and cand.own_message_ids.get(mid) == t:
            return SenderCheck(
                True,
                f"not authenticated ({why}); accepted: {who} is a participant of thread {t} and "
                f"answers our signed Message-ID <{mid}>",
                True,
            )
        if sender in cand.sent_to.get(mid, ()) and cand.by_message_id.get(mid) == t:
            return SenderCheck(
                True, f"not authenticated ({why}); accepted: answers our message <{mid}>, sent to {who}", True
            )
    if participant:
        return SenderCheck(
            False,
            f"{who} is a participant of thread {t} but not authenticated ({why}) and answers none of "
            "our messages to them",
        )
    return SenderCheck(False, f"{who} is not a participant of the thread and not authenticated ({why})")
