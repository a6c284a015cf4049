"""The thread resolver: weighs every piece of evidence instead of taking the first match.

``resolve(msg, candidates) -> RoutingDecision``. Header rules (our signed Message-IDs, relay tokens,
In-Reply-To, the whole References chain, Gmail/Outlook conversation ids, references seen from the other
side) each vote for a thread with a weight; the thread with the highest score wins (ties: the oldest
thread). Without header evidence, a reply-looking message may join a thread with the same normalised
subject and shared participants inside a time window. A forward starts a new thread unless it
references one of our own Message-IDs. A sender who is neither a participant of the chosen thread nor
authenticated gets a thread of his own, flagged ``unverified`` with the thread it claims.

Direction: a copy is outgoing when it was found in a Sent folder or our outbox (``msg.direction``), or
when its From is one of the team's addresses *and* authenticated (DKIM aligned / DMARC pass). An
unauthenticated incoming message claiming one of our addresses stays incoming, is flagged
``suspicious`` (rule ``own_address_unauthenticated``) and may not join a thread as that sender.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Any

from mailroom.routing.rules import (
    HEADER_RULES,
    OUTGOING,
    STRONG_RULES,
    Candidates,
    RoutingInput,
    RuleHit,
    own_from,
    sender_check,
    subject_fallback,
)
from mailroom.routing.subjects import is_forward, normalize_subject

FLAG_UNVERIFIED = "unverified"
FLAG_FORWARD = "forward"
FLAG_AUTO_REPLY = "auto_reply"
FLAG_BULK = "bulk"
FLAG_SUSPICIOUS = "suspicious"  # claims one of our own addresses without authentication
FLAG_UNAUTHENTICATED = "unauthenticated"  # joined its thread on what it references, not DKIM/DMARC


@dataclass(frozen=True, slots=True)
class RoutingDecision:
    thread_id: int | None  # an existing thread; None: start a new thread
    rules: tuple[RuleHit, ...]
    flags: tuple[str, ...] = ()
    claimed_thread_id: int | None = None  # unverified: the thread the headers point into
    normalized_subject: str = ""
    # Threads made of replies to this message that arrived before it: they join the chosen thread.
    merge_thread_ids: tuple[int, ...] = ()
    direction: str = "incoming"  # the message's direction after the own-address check

    @property
    def new_thread(self) -> bool:
        return self.thread_id is None

    def as_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "thread": self.thread_id,
            "new_thread": self.new_thread,
            "rules": [h.as_json() for h in self.rules],
            "flags": list(self.flags),
        }
        if self.claimed_thread_id is not None:
            data["claimed_thread"] = self.claimed_thread_id
        if self.merge_thread_ids:
            data["merged_threads"] = list(self.merge_thread_ids)
        return data


def _score(hits: list[RuleHit]) -> dict[int, float]:
    by_thread: dict[int, list[RuleHit]] = defaultdict(list)
    for h in hits:
        if h.thread_id is not None:
            by_thread[h.thread_id].append(h)
    # The strongest hit decides; each further distinct rule adds a little corroboration.
    return {
        t: max(h.weight for h in hs) + 0.5 * (len({h.rule for h in hs}) - 1) for t, hs in by_thread.items()
    }


def _collapse(hits: list[RuleHit]) -> list[RuleHit]:
    """One recorded hit per (rule, thread): the strongest, saying how many more agreed (a long
    References chain into one thread is one piece of evidence, not ten lines of it)."""
    seen: dict[tuple[str, int | None], int] = {}
    extra: dict[int, int] = defaultdict(int)
    out: list[RuleHit] = []
    for h in hits:
        if h.thread_id is None:
            out.append(h)
            continue
        key = (h.rule, h.thread_id)
        if key in seen:
            extra[seen[key]] += 1
            continue
        seen[key] = len(out)
        out.append(h)
    for i, n in extra.items():
        h = out[i]
        out[i] = RuleHit(h.rule, f"{h.reason} (+{n} more)", h.thread_id, h.weight)
    return out


def resolve(msg: RoutingInput, cand: Candidates) -> RoutingDecision:
    norm = normalize_subject(msg.subject)
    flags: list[str] = []
    if msg.is_auto_reply:
        flags.append(FLAG_AUTO_REPLY)
    if msg.is_bulk:
        flags.append(FLAG_BULK)
    pre: list[RuleHit] = []
    if msg.from_ambiguous and msg.direction != OUTGOING and cand.override_thread is None:
        # Being named in a From is no evidence of who sent it, least of all beside another From.
        flags.append(FLAG_UNVERIFIED)
        hit = RuleHit("ambiguous_from", f"who sent it cannot be told ({msg.from_ambiguous}): held for review, never threaded")
        return RoutingDecision(None, (hit,), tuple(flags), None, norm, (), msg.direction)
    own = own_from(msg, cand.own_addresses)
    if own is not None:
        pre.append(own)
        if own.rule == "own_address_authenticated":
            msg = replace(msg, direction=OUTGOING)
        else:
            flags.append(FLAG_SUSPICIOUS)
    direction = msg.direction

    if cand.override_thread is not None:
        hit = RuleHit(
            "user_placed",
            f"a user put this message into thread {cand.override_thread}",
            cand.override_thread,
            1000,
        )
        return RoutingDecision(cand.override_thread, (hit, *pre), tuple(flags), None, norm, (), direction)

    hits: list[RuleHit] = []
    for rule in HEADER_RULES:
        hits.extend(rule(msg, cand))

    forward = is_forward(msg.subject)
    if forward:
        flags.append(FLAG_FORWARD)
        if not any(h.rule in STRONG_RULES for h in hits):
            ignored = sorted({h.thread_id for h in hits if h.thread_id is not None})
            reason = "a forward starts a new thread unless it references one of our Message-IDs"
            if ignored:
                reason += f" (header evidence for thread(s) {', '.join(map(str, ignored))} ignored)"
            return RoutingDecision(
                None,
                (*pre, RuleHit("forward_new_thread", reason), *_collapse(hits)),
                tuple(flags),
                None,
                norm,
                (),
                direction,
            )

    scores = _score(hits)
    if not scores:
        fallback = subject_fallback(msg, cand)
        if fallback is not None:
            assert fallback.thread_id is not None
            check = sender_check(msg, cand.threads.get(fallback.thread_id), cand)
            if not check.ok or check.unauthenticated:
                # A subject and a participant's name are anyone's to copy: authenticated senders only.
                flags.append(FLAG_UNVERIFIED)
                why = check.why if not check.ok else f"{msg.from_address} is not authenticated"
                hit = RuleHit("unverified_sender", f"claims to reply to thread {fallback.thread_id}, but {why}")
                return RoutingDecision(None, (hit, *pre, fallback), tuple(flags), fallback.thread_id, norm, (), direction)
            verified = RuleHit("sender_verified", check.why)
            return RoutingDecision(
                fallback.thread_id, (*pre, fallback, verified), tuple(flags), None, norm, (), direction
            )
        new = RuleHit("new_thread", "no evidence of an existing thread")
        return RoutingDecision(None, (*pre, new), tuple(flags), None, norm, (), direction)

    best = min(scores, key=lambda t: (-scores[t], t))
    rules: list[RuleHit] = pre + _collapse(sorted(hits, key=lambda h: (h.thread_id != best, -h.weight)))
    others = sorted(t for t in scores if t != best)
    if others:
        rules.append(
            RuleHit(
                "conflicting_evidence",
                f"weaker evidence for thread(s) {', '.join(map(str, others))} outweighed",
            )
        )
    check = sender_check(msg, cand.threads.get(best), cand)
    if not check.ok:
        flags.append(FLAG_UNVERIFIED)
        rules.insert(0, RuleHit("unverified_sender", f"claims to reply to thread {best}, but {check.why}"))
        return RoutingDecision(None, tuple(rules), tuple(flags), best, norm, (), direction)
    if check.unauthenticated:
        flags.append(FLAG_UNAUTHENTICATED)
        rules.append(RuleHit("sender_unauthenticated", check.why))
    else:
        rules.append(RuleHit("sender_verified", check.why))
    # Replies that arrived before this message started threads of their own: this message bridges them.
    merge: list[int] = []
    for h in hits:
        if h.rule == "referenced_by_thread" and h.thread_id is not None and h.thread_id != best:
            other = sender_check(msg, cand.threads.get(h.thread_id), cand)
            ok_other, why_other = other.ok, other.why
            if ok_other and h.thread_id not in merge:
                merge.append(h.thread_id)
                rules.append(
                    RuleHit(
                        "bridge_merge",
                        f"thread {h.thread_id} holds replies to this message: "
                        f"merged into thread {best} ({why_other})",
                        h.thread_id,
                        h.weight,
                    )
                )
    return RoutingDecision(best, tuple(rules), tuple(flags), None, norm, tuple(merge), direction)
