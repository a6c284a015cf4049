"""Linking: apply the routing rules to parsed messages, in batches, in one transaction per team batch.

``messages_link(message_pks=...)`` loads the messages and every candidate thread with a fixed number of
queries per batch, asks the pure resolver (``mailroom.routing``) for each message in date order, and
writes threads, messages, participants' contacts, new contacts/companies and deal links in bulk. It
is idempotent: a second run finds the same evidence and changes nothing (a message whose outcome is
unchanged keeps its recorded reasons). It also serves replays (``mailroom relink``): messages already
LINKED are re-routed the same way, honouring the users' placements (split, merge, accepted claims).

Direction comes from the resolver: outgoing for a Sent-folder/outbox copy, or when From is one of the
team's addresses and authenticated; an unauthenticated "From: us" stays incoming, flagged
``suspicious`` and on no contact's card. Messages delivered to a relay token (LMTP) carry the token's
thread (``outbound.relay.relay_threads_for_messages``, one lookup per batch).

Speed: new threads get real ids up front (reserved from the table's sequence), so nothing is
rewritten after the insert; rows are written with one statement per table and batch (PostgreSQL: a
JSON document through ``jsonb_to_recordset``; SQLite: ``executemany``), and long ``IN`` lists are one
JSON parameter.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import lru_cache
from typing import Any

from django.contrib.auth import get_user_model
from django.db import connection, transaction
from django.db.models import Count, Max, Min
from django.db.models.expressions import RawSQL
from django.utils import timezone

from mailroom.conversations.models import (
    Message,
    MessageContact,
    MessageKey,
    MessagePlacement,
    Participant,
    Source,
    Thread,
    ThreadAlias,
)
from mailroom.conversations.threads import repoint, thread_refs_follow_merge
from mailroom.core.db import insert_tuples, update_tuples
from mailroom.core.tokens import parse_own_message_id
from mailroom.crm.models import Company, CompanyDomain, Contact, ContactEmail, Deal, IgnoreEntry
from mailroom.mailboxes.models import Mailbox
from mailroom.outbound.relay import relay_threads_for_messages
from mailroom.routing.addresses import canonical_address
from mailroom.routing.linkrules import (
    RECIPIENT_ROLES,
    ContactContext,
    ContactPlan,
    DealInput,
    ParticipantIn,
    choose_deal,
    company_domain,
    company_name_for,
    plan_contacts,
    strongest_policy,
)
from mailroom.routing.resolver import FLAG_SUSPICIOUS, FLAG_UNVERIFIED, RoutingDecision, resolve
from mailroom.routing.rules import (
    DEFAULT_SUBJECT_WINDOW,
    OUTGOING,
    AuthVerdict,
    Candidates,
    RoutingInput,
    RuleHit,
    ThreadInfo,
)
from mailroom.routing.subjects import normalize_subject
from mailroom.routing.threadindex import conversation_id

log = logging.getLogger(__name__)

LINKABLE = (Message.State.PARSED, Message.State.LINKED)
_ADDRESS_ROLES = ("from", "to", "cc")
_MSG_FIELDS = (
    "id",
    "team_id",
    "message_id",
    "message_id_hash",
    "in_reply_to",
    "references",
    "subject",
    "from_address",
    "date",
    "received_at",
    "auth",
    "routing_headers",
    "is_auto_reply",
    "is_bulk",
    "direction",
    "thread_id",
    "state",
    "routing",
)


@lru_cache(maxsize=1 << 16)
def _h(message_id: str) -> str:
    return hashlib.sha256(message_id.encode("utf-8", "surrogateescape")).hexdigest()


def messages_link(*, message_pks: list[int]) -> None:
    """Thread and link these messages (PARSED, or LINKED for a replay). Idempotent."""
    rows = list(Message.objects.filter(pk__in=_each(message_pks), state__in=LINKABLE).values(*_MSG_FIELDS))
    by_team: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_team[r["team_id"]].append(r)
    for team_id, msgs in by_team.items():
        msgs.sort(key=lambda r: (r["date"] or r["received_at"], r["id"]))
        with transaction.atomic():
            if connection.vendor == "postgresql":
                # Derived data: a batch lost in a crash is rolled back whole (the messages stay PARSED
                # and are linked again), and nothing outside waits for it, so the commit need not
                # wait for the WAL flush.
                with connection.cursor() as cur:
                    cur.execute("SET LOCAL synchronous_commit TO OFF")
            _TeamBatch(team_id, msgs).run()


@dataclass
class _ThreadState:
    id: int  # reserved from the table's sequence when created in this batch (inserted at the end)
    subject: str = ""
    normalized_subject: str = ""
    participants: set[str] = field(default_factory=set)
    first: datetime | None = None
    last: datetime | None = None
    deal_id: int | None = None
    deal_source: str = ""
    deal_candidates: list[int] = field(default_factory=list)
    verification: str = ""
    claimed: int | None = None
    dirty: bool = False

    def info(self) -> ThreadInfo:
        return ThreadInfo(self.id, frozenset(self.participants), self.last, self.normalized_subject)


@dataclass
class _Msg:
    row: dict[str, Any]
    inp: RoutingInput
    keys: list[str]
    participants: list[tuple[int, str, str, str, int | None]]  # (pk, role, address, name, contact)
    thread: int | None = None
    routing: dict[str, Any] = field(default_factory=dict)
    direction: str = ""
    contacts: dict[int, str] = field(default_factory=dict)  # participant pk -> canonical to link


class _TeamBatch:
    def __init__(self, team_id: int, rows: list[dict[str, Any]]) -> None:
        self.team_id = team_id
        self.rows = rows
        self.id_pool: deque[int] = deque()
        self.reserved_up_to = 0
        self.unrouted = len(rows)
        self.created: set[int] = set()  # threads created in this batch (not in the database yet)
        self.threads: dict[int, _ThreadState] = {}
        self.alias: dict[int, int] = {}  # absorbed -> survivor (persistent and in-batch)
        self.merges: list[tuple[int, int]] = []  # (absorbed, survivor) decided in this batch
        self.hash_threads: dict[str, list[tuple[int, int]]] = defaultdict(list)  # mid hash -> (pk, thread)
        self.key_threads: dict[str, list[tuple[int, int]]] = defaultdict(list)  # key -> (pk, thread)
        self.subject_threads: dict[str, list[int]] = defaultdict(list)
        self.touched: set[int] = set()
        self._unverified_cache: set[int] | None = None

    # --- helpers ---------------------------------------------------------------------------------------
    def find(self, t: int) -> int:
        seen = 0
        while t in self.alias and seen < 100:
            t = self.alias[t]
            seen += 1
        return t

    def _new_thread(self, subject: str, norm: str) -> _ThreadState:
        if not self.id_pool:
            # At most one new thread per message still to route: few ids are left unused.
            want = max(1, min(128, self.unrouted))
            self.id_pool.extend(_reserve_ids(Thread, want, after=self.reserved_up_to))
            self.reserved_up_to = self.id_pool[-1]
        t = _ThreadState(
            id=self.id_pool.popleft(), subject=subject[:1000], normalized_subject=norm, dirty=True
        )
        self.created.add(t.id)
        self.threads[t.id] = t
        return t

    # --- load ------------------------------------------------------------------------------------------
    def _load(self) -> list[_Msg]:
        team_id = self.team_id
        pks = [r["id"] for r in self.rows]
        parts: dict[int, list[tuple[int, str, str, str, int | None]]] = defaultdict(list)
        for pid, mid, role, addr, name, contact in Participant.objects.filter(
            message_id__in=_each(pks)
        ).values_list("id", "message_id", "role", "address", "name", "contact_id"):
            parts[mid].append((pid, role, addr, name, contact))

        msgs: list[_Msg] = []
        for r in self.rows:
            p = parts.get(r["id"], [])
            rh = r["routing_headers"] or {}
            to = tuple(a for _, role, a, _, _ in p if role == "to")
            cc = tuple(a for _, role, a, _, _ in p if role == "cc")
            inp = RoutingInput(
                message_id=r["message_id"],
                in_reply_to=tuple(r["in_reply_to"] or ()),
                references=tuple(r["references"] or ()),
                subject=r["subject"] or "",
                from_address=r["from_address"] or "",
                to=to,
                cc=cc,
                date=r["date"] or r["received_at"],
                auth=AuthVerdict.from_json(r["auth"]),
                thread_index=str(rh.get("thread_index") or ""),
                gm_thrid=str(rh.get("gm_thread_id") or ""),
                from_ambiguous=str(rh.get("from_ambiguous") or ""),
                is_auto_reply=bool(r["is_auto_reply"]),
                is_bulk=bool(r["is_bulk"]),
                direction=r["direction"],
            )
            keys = [f"r:{_h(mid)}" for mid in inp.referenced_ids]
            conv = conversation_id(inp.thread_index)
            if conv:
                keys.append(f"ti:{conv}")
            if inp.gm_thrid:
                keys.append(f"gm:{inp.gm_thrid[:70]}")
            msgs.append(_Msg(row=r, inp=inp, keys=keys, participants=p))

        # The team's own addresses: its mailboxes and its users.
        mailbox_emails = list(Mailbox.objects.filter(team_id=team_id).values_list("email", flat=True))
        user_emails = list(
            get_user_model()
            .objects.filter(memberships__team_id=team_id)
            .exclude(email="")
            .values_list("email", flat=True)
        )
        self.own = frozenset(canonical_address(a) for a in [*mailbox_emails, *user_emails] if a)
        ignore = list(IgnoreEntry.objects.filter(team_id=team_id).values_list("kind", "value"))
        self.ignore_addresses = frozenset(
            canonical_address(v) for k, v in ignore if k == IgnoreEntry.Kind.ADDRESS
        )
        self.ignore_domains = frozenset(v.lower() for k, v in ignore if k == IgnoreEntry.Kind.DOMAIN)
        self.policies: dict[int, list[str]] = defaultdict(list)
        for mid, policy in Source.objects.filter(
            message_id__in=_each(pks), mailbox__isnull=False
        ).values_list("message_id", "mailbox__contact_policy"):
            self.policies[mid].append(policy)
        # Delivered over LMTP to a signed reply address: message -> the relay token's thread.
        self.relay: dict[int, int] = relay_threads_for_messages(pks)
        self.placements: dict[int, int] = {}
        self.split_out: set[int] = set()
        for mid, t, reason in MessagePlacement.objects.filter(message_id__in=_each(pks)).values_list(
            "message_id", "thread_id", "reason"
        ):
            self.placements[mid] = t
            if reason == MessagePlacement.Reason.SPLIT:
                self.split_out.add(mid)

        # Evidence: stored messages with the ids we mention, keys we carry, our own tokens.
        all_ids = {m.inp.message_id for m in msgs} | {mid for m in msgs for mid in m.inp.referenced_ids}
        hashes = {_h(mid) for mid in all_ids}
        outgoing: list[int] = []
        for h, pk, t, direction in Message.objects.filter(
            team_id=team_id, message_id_hash__in=_each(hashes), thread__isnull=False
        ).values_list("message_id_hash", "id", "thread_id", "direction"):
            self.hash_threads[h].append((pk, t))
            if direction == Message.Direction.OUTGOING:
                outgoing.append(pk)
        # Whom our referenced outgoing messages were sent to: they may answer without DKIM.
        self.sent_recipients: dict[int, set[str]] = defaultdict(set)
        for pk, addr in Participant.objects.filter(
            message_id__in=_each(outgoing), role__in=sorted(RECIPIENT_ROLES)
        ).values_list("message_id", "address"):
            self.sent_recipients[pk].add(canonical_address(addr))
        all_keys = {k for m in msgs for k in m.keys} | {f"r:{_h(m.inp.message_id)}" for m in msgs}
        # A message a user split out of its thread does not pull its references after it.
        for k, pk, t in (
            MessageKey.objects.filter(team_id=team_id, key__in=_each(all_keys), message__thread__isnull=False)
            .exclude(message__placement__reason=MessagePlacement.Reason.SPLIT)
            .values_list("key", "message_id", "message__thread_id")
        ):
            self.key_threads[k].append((pk, t))
        self.own_tokens: dict[str, int] = {}
        for ref in all_ids:
            own = parse_own_message_id(ref) if ref.startswith(("mr.", "MR.")) else None
            if own is not None and own.thread_id is not None:
                self.own_tokens[ref] = own.thread_id
        token_threads = set(self.own_tokens.values()) | set(self.relay.values())
        for absorbed, survivor in ThreadAlias.objects.filter(
            absorbed_id__in=token_threads | set(self.placements.values())
        ).values_list("absorbed_id", "survivor_id"):
            self.alias[absorbed] = survivor

        norms = {normalize_subject(m.inp.subject) for m in msgs} - {""}
        dates = [m.inp.date for m in msgs if m.inp.date]
        subj_ids: list[tuple[int, str]] = []
        if norms and dates:
            subj_ids = list(
                Thread.objects.filter(
                    team_id=team_id,
                    normalized_subject__in=norms,
                    last_message_at__gte=min(dates) - DEFAULT_SUBJECT_WINDOW,
                )
                .order_by("-last_message_at")
                .values_list("id", "normalized_subject")[:2000]
            )
        for t, norm in subj_ids:
            self.subject_threads[norm].append(t)

        wanted = (
            {t for lst in self.hash_threads.values() for _, t in lst}
            | {t for lst in self.key_threads.values() for _, t in lst}
            | {t for t, _ in subj_ids}
            | set(self.alias.values())
            | token_threads
            | {m.row["thread_id"] for m in msgs if m.row["thread_id"]}
            | set(self.placements.values())
        )
        for row in Thread.objects.filter(team_id=team_id, id__in=_each(wanted)).values(
            "id",
            "subject",
            "normalized_subject",
            "participants",
            "first_message_at",
            "last_message_at",
            "deal_id",
            "deal_source",
            "deal_candidates",
            "verification",
            "claimed_thread_id",
        ):
            self.threads[row["id"]] = _ThreadState(
                id=row["id"],
                subject=row["subject"],
                normalized_subject=row["normalized_subject"],
                participants=set(row["participants"] or ()),
                first=row["first_message_at"],
                last=row["last_message_at"],
                deal_id=row["deal_id"],
                deal_source=row["deal_source"],
                deal_candidates=list(row["deal_candidates"] or ()),
                verification=row["verification"],
                claimed=row["claimed_thread_id"],
            )
        # Tokens naming a thread that no longer exists are not evidence.
        self.own_tokens = {mid: t for mid, t in self.own_tokens.items() if self.find(t) in self.threads}
        return msgs

    # --- route -----------------------------------------------------------------------------------------
    def _candidates(self, m: _Msg) -> Candidates:
        pk = m.row["id"]
        by_mid: dict[str, int] = {}
        referenced_by: dict[str, tuple[int, ...]] = {}
        sent_to: dict[str, frozenset[str]] = {}
        for mid in (m.inp.message_id, *m.inp.referenced_ids):
            for opk, t in self.hash_threads.get(_h(mid), ()):
                if opk != pk:
                    by_mid.setdefault(mid, self.find(t))
                    break
            recipients = {a for opk, _ in self.hash_threads.get(_h(mid), ()) for a in self.sent_recipients.get(opk, ())}
            if recipients:
                sent_to[mid] = frozenset(recipients)
            # An unverified thread's claims are no evidence for anything else.
            ts = {
                self.find(t) for opk, t in self.key_threads.get(f"r:{_h(mid)}", ()) if opk != pk
            } - self._unverified()
            if ts:
                referenced_by[mid] = tuple(sorted(ts))
        by_ti: dict[str, int] = {}
        by_gm: dict[str, int] = {}
        for k in m.keys:
            if k.startswith(("ti:", "gm:")):
                for opk, t in self.key_threads.get(k, ()):
                    if opk != pk:
                        (by_ti if k.startswith("ti:") else by_gm)[k[3:]] = self.find(t)
                        break
        norm = normalize_subject(m.inp.subject)
        by_subject = tuple(dict.fromkeys(self.find(t) for t in self.subject_threads.get(norm, ())))
        own = {mid: self.find(self.own_tokens[mid]) for mid in m.inp.referenced_ids if mid in self.own_tokens}
        ids = set(by_mid.values()) | {t for ts in referenced_by.values() for t in ts} | set(by_ti.values())
        ids |= set(by_gm.values()) | set(by_subject) | set(own.values())
        if m.inp.relay_thread_id is not None:
            ids.add(m.inp.relay_thread_id)
        override = self.placements.get(pk)
        return Candidates(
            threads={t: self.threads[t].info() for t in ids if t in self.threads},
            own_message_ids=own,
            by_message_id=by_mid,
            referenced_by=referenced_by,
            by_thread_index={conversation_id(m.inp.thread_index): by_ti[k] for k in by_ti} if by_ti else {},
            by_gm_thrid=by_gm,
            by_subject=by_subject,
            own_addresses=self.own,
            sent_to=sent_to,
            override_thread=self.find(override) if override is not None else None,
        )

    def _unverified(self) -> set[int]:
        if self._unverified_cache is None:
            self._unverified_cache = {t.id for t in self.threads.values() if t.verification}
        return self._unverified_cache

    def _merge(self, absorbed: int, survivor: int) -> None:
        absorbed, survivor = self.find(absorbed), self.find(survivor)
        if absorbed == survivor:
            return
        a, s = self.threads.get(absorbed), self.threads.get(survivor)
        self.alias[absorbed] = survivor
        self.merges.append((absorbed, survivor))
        if a is not None and s is not None:
            s.participants |= a.participants
            s.first = min((d for d in (a.first, s.first) if d), default=None)
            s.last = max((d for d in (a.last, s.last) if d), default=None)
            if s.deal_id is None and a.deal_id is not None:
                s.deal_id, s.deal_source = a.deal_id, a.deal_source
            s.dirty = True
        self.touched.add(survivor)

    def _relay_thread(self, pk: int) -> int | None:
        t = self.find(self.relay[pk])  # merged threads: the survivor
        return t if t in self.threads else None

    def _route(self, m: _Msg) -> RoutingDecision:
        if m.row["id"] in self.relay:
            m.inp = replace(m.inp, relay_thread_id=self._relay_thread(m.row["id"]))
        decision = resolve(m.inp, self._candidates(m))
        current = m.row["thread_id"]
        current = self.find(current) if current else None
        for absorbed in decision.merge_thread_ids:
            if decision.thread_id is not None:
                self._merge(absorbed, decision.thread_id)
        if decision.thread_id is not None:
            tid = self.find(decision.thread_id)
        elif (
            current is not None
            and current in self.threads
            and _starts(m.inp.date, self.threads[current].first)
        ):
            tid = current  # a replay: the message started this thread, keep it rather than make another
        else:
            t = self._new_thread(m.inp.subject, decision.normalized_subject)
            if FLAG_UNVERIFIED in decision.flags:
                self._unverified_cache = None
                t.verification = Thread.Verification.UNVERIFIED
                t.claimed = decision.claimed_thread_id
            tid = t.id
        st = self.threads[tid]
        st.participants |= {
            canonical_address(a) for _, role, a, _, _ in m.participants if role in _ADDRESS_ROLES
        }
        if m.inp.from_address:
            st.participants.add(canonical_address(m.inp.from_address))
        if m.inp.date:
            st.first = min(st.first, m.inp.date) if st.first else m.inp.date
            st.last = max(st.last, m.inp.date) if st.last else m.inp.date
        st.dirty = True
        m.thread = tid
        if current is not None and current != tid:
            self.touched.add(current)
        self.touched.add(tid)
        pk = m.row["id"]
        self.hash_threads[m.row["message_id_hash"]].append((pk, tid))
        if decision.direction == OUTGOING:  # later messages of this batch may answer it
            self.sent_recipients[pk] = {
                canonical_address(a) for _, role, a, _, _ in m.participants if role in RECIPIENT_ROLES
            }
        if pk not in self.split_out:
            for k in m.keys:
                self.key_threads[k].append((pk, tid))
        if decision.normalized_subject and tid not in self.subject_threads[decision.normalized_subject]:
            self.subject_threads[decision.normalized_subject].insert(0, tid)
        self.unrouted -= 1
        return decision

    # --- run -------------------------------------------------------------------------------------------
    def run(self) -> None:
        msgs = self._load()
        decisions = [(m, self._route(m)) for m in msgs]
        self._link_contacts(decisions)
        self._write(decisions)

    def _link_contacts(self, decisions: list[tuple[_Msg, RoutingDecision]]) -> None:
        team_id = self.team_id
        canon_of = {a: canonical_address(a) for m, _ in decisions for _, _, a, _, _ in m.participants}
        canons = set(canon_of.values())
        self.contact_by_canon: dict[str, int] = {}
        for canon, contact in (
            ContactEmail.objects.filter(team_id=team_id, canonical__in=_each(canons))
            .order_by("id")
            .values_list("canonical", "contact_id")
        ):
            self.contact_by_canon.setdefault(canon, contact)
        self.new_contacts: dict[str, tuple[str, str, str | None]] = {}  # canon -> (address, name, domain)
        for m, decision in decisions:
            # Outgoing: a Sent/outbox copy, or From one of ours *and* authenticated (see the resolver).
            direction = m.direction = decision.direction
            unverified = FLAG_UNVERIFIED in decision.flags
            suspicious = FLAG_SUSPICIOUS in decision.flags
            ctx = ContactContext(
                policy=strongest_policy(self.policies.get(m.row["id"], ())),
                direction=direction,
                is_auto_reply=m.inp.is_auto_reply,
                is_bulk=m.inp.is_bulk,
                unverified=unverified,
                own_addresses=self.own,
                ignore_addresses=self.ignore_addresses,
                ignore_domains=self.ignore_domains,
            )
            plist = [ParticipantIn(role, a, name) for _, role, a, name, _ in m.participants]
            known = frozenset(self.contact_by_canon) | frozenset(self.new_contacts)
            plan = ContactPlan() if suspicious else plan_contacts(plist, known, ctx)
            contact_hits: list[RuleHit] = list(plan.skipped)
            for nc in plan.create:
                domain, why = company_domain(nc.address)
                self.new_contacts[nc.canonical] = (nc.address, nc.name, domain)
                contact_hits.append(RuleHit("contact_created", f"{nc.reason}; {why}"))
            for ppk, role, a, _, _ in m.participants:
                canon = canon_of[a]
                if canon in self.own or suspicious:
                    continue
                if unverified and role in ("from", "sender", "reply_to"):
                    continue  # not on the contact's card until a user accepts
                if canon in self.contact_by_canon or canon in self.new_contacts:
                    m.contacts[ppk] = canon
            if unverified:
                contact_hits.append(
                    RuleHit("unverified_sender", "sender not linked to a contact until accepted")
                )
            if suspicious:
                contact_hits.append(
                    RuleHit("suspicious", "claims one of our addresses unauthenticated: on no contact's card")
                )
            m.routing = {"thread": decision.as_json(), "contacts": [h.as_json() for h in contact_hits]}

    def _create_contacts(self) -> None:
        team_id = self.team_id
        if not self.new_contacts:
            return
        # Companies from the new contacts' domains: matched, or created.
        domains = {d for _, _, d in self.new_contacts.values() if d}
        company_by_domain = dict(
            CompanyDomain.objects.filter(team_id=team_id, domain__in=domains).values_list(
                "domain", "company_id"
            )
        )
        missing = sorted(domains - set(company_by_domain))
        if missing:
            companies = Company.objects.bulk_create(
                [Company(team_id=team_id, name=company_name_for(d)) for d in missing]
            )
            CompanyDomain.objects.bulk_create(
                [
                    CompanyDomain(team_id=team_id, company_id=c.pk, domain=d)
                    for c, d in zip(companies, missing, strict=True)
                ],
                ignore_conflicts=True,
            )
            company_by_domain = dict(
                CompanyDomain.objects.filter(team_id=team_id, domain__in=domains).values_list(
                    "domain", "company_id"
                )
            )
            lost = [c.pk for c in companies if c.pk not in set(company_by_domain.values())]
            if lost:  # a concurrent linker created the same domain: keep theirs
                Company.objects.filter(pk__in=lost).delete()
        items = sorted(self.new_contacts.items())
        contacts = Contact.objects.bulk_create(
            [
                Contact(
                    team_id=team_id,
                    name=name[:300],
                    company_id=company_by_domain.get(domain) if domain else None,
                    created_automatically=True,
                )
                for _, (_, name, domain) in items
            ]
        )
        ContactEmail.objects.bulk_create(
            [
                ContactEmail(team_id=team_id, contact_id=c.pk, address=address[:320], canonical=canon[:320])
                for c, (canon, (address, _, _)) in zip(contacts, items, strict=True)
            ],
            ignore_conflicts=True,
        )
        for canon, contact in (
            ContactEmail.objects.filter(team_id=team_id, canonical__in=[c for c, _ in items])
            .order_by("id")
            .values_list("canonical", "contact_id")
        ):
            self.contact_by_canon.setdefault(canon, contact)
        used = set(self.contact_by_canon.values())
        lost = [c.pk for c in contacts if c.pk not in used]
        if lost:
            Contact.objects.filter(pk__in=lost).delete()

    def _write(self, decisions: list[tuple[_Msg, RoutingDecision]]) -> None:
        team_id = self.team_id
        self._create_contacts()

        def tid(t: int | None) -> int | None:
            return None if t is None else self.find(t)

        # Merges decided by the rules (bridges): move messages and record aliases. Threads created in
        # this batch hold nothing in the database yet; the survivor may be one (inserted below: the
        # foreign keys are checked at commit). All of the batch's merges at once: one UPDATE a table
        # and one delete (a merge at a time, their queries and the deletion's cascade lookups were a
        # fifth of linking on bench/import_bench.py).
        survivors: dict[int, int] = {}
        for absorbed, _survivor in self.merges:
            if absorbed not in self.created:
                survivor = tid(absorbed)
                assert survivor is not None
                survivors[absorbed] = survivor
        if survivors:
            for model, column in (
                (Message, "thread_id"), (MessagePlacement, "thread_id"), (ThreadAlias, "survivor_id"),
                (Thread, "claimed_thread_id"),
            ):
                repoint(model, column, survivors)
            ThreadAlias.objects.bulk_create(  # an alias already recorded for a thread is kept
                [ThreadAlias(absorbed_id=a, team_id=team_id, survivor_id=s) for a, s in survivors.items()],
                ignore_conflicts=True,
            )
            thread_refs_follow_merge(survivors=survivors)
            absorbed_ids = list(survivors)
            for i in range(0, len(absorbed_ids), 900):
                Thread.objects.filter(pk__in=absorbed_ids[i : i + 900]).delete()
            self.touched.difference_update(survivors)

        # Deals: per thread, in message order.
        contact_ids = set(self.contact_by_canon.values())
        contact_company = dict(Contact.objects.filter(pk__in=contact_ids).values_list("id", "company_id"))
        company_ids = {c for c in contact_company.values() if c}
        open_by_contact: dict[int, set[int]] = defaultdict(set)
        open_by_company: dict[int, set[int]] = defaultdict(set)
        for d, c, _co in (
            Deal.objects.filter(team_id=team_id, status=Deal.Status.OPEN)
            .filter(contact_id__in=contact_ids)
            .values_list("id", "contact_id", "company_id")
        ):
            open_by_contact[c].add(d)
        for d, _c, co in Deal.objects.filter(
            team_id=team_id, status=Deal.Status.OPEN, company_id__in=company_ids
        ).values_list("id", "contact_id", "company_id"):
            open_by_company[co].add(d)

        msg_updates: list[tuple[Any, ...]] = []
        part_updates: list[tuple[Any, ...]] = []
        keys: list[tuple[int, int, str]] = []
        links: list[tuple[int, int, int | None, int, datetime]] = []
        relinked: list[int] = []
        for m, _decision in decisions:
            st = self.threads[self.find(m.thread)] if m.thread is not None else None
            final_thread = tid(m.thread)
            ext_contacts: dict[int, None] = {}
            for ppk, _role, _a, _n, old_contact in m.participants:
                canon = m.contacts.get(ppk)
                new_contact = self.contact_by_canon.get(canon) if canon else None
                if new_contact != old_contact:
                    part_updates.append((ppk, new_contact))
                if new_contact is not None:
                    ext_contacts[new_contact] = None
            if st is not None:
                if st.deal_id is None and st.deal_source != Thread.DealSource.USER:
                    dd = choose_deal(
                        DealInput(
                            thread_deal=None,
                            thread_deal_source="",
                            contact_open_deals={
                                c: tuple(sorted(open_by_contact[c]))
                                for c in ext_contacts
                                if open_by_contact.get(c)
                            },
                            company_open_deals={
                                co: tuple(sorted(open_by_company[co]))
                                for co in {contact_company.get(c) for c in ext_contacts}
                                if co and open_by_company.get(co)
                            },
                        )
                    )
                    if dd.deal_id is not None:
                        st.deal_id, st.deal_source, st.deal_candidates = (
                            dd.deal_id,
                            Thread.DealSource.AUTO,
                            [],
                        )
                    elif dd.candidates:
                        st.deal_candidates = list(dd.candidates)
                    st.dirty = True
                else:
                    dd = choose_deal(DealInput(thread_deal=st.deal_id, thread_deal_source=st.deal_source))
                m.routing["deal"] = {"deal": dd.deal_id, **dd.hit.as_json()}
                if dd.candidates:
                    m.routing["deal"]["candidates"] = list(dd.candidates)
            old = m.row["routing"] or {}
            was_linked = m.row["state"] == Message.State.LINKED
            m.routing["thread"]["thread"] = final_thread
            if was_linked:
                relinked.append(m.row["id"])
                # Same outcome as before: keep the reasons recorded when it was decided.
                if m.row["thread_id"] == final_thread and old.get("thread"):
                    m.routing["thread"] = old["thread"]
                if old.get("deal") and old["deal"].get("deal") == m.routing.get("deal", {}).get("deal"):
                    m.routing["deal"] = old["deal"]
                created_now = any(h.get("rule") == "contact_created" for h in m.routing.get("contacts", []))
                if "contacts" in old and not created_now:
                    m.routing["contacts"] = old["contacts"]
            changed = (
                not was_linked
                or m.row["thread_id"] != final_thread
                or m.row["direction"] != m.direction
                or old != m.routing
            )
            if changed:
                msg_updates.append((m.row["id"], final_thread, m.routing, Message.State.LINKED, m.direction))
            if not was_linked:
                keys.extend((team_id, m.row["id"], k[:80]) for k in m.keys)
            when = m.inp.date or m.row["received_at"]
            for c in ext_contacts:
                links.append((team_id, c, contact_company.get(c), m.row["id"], when))

        if msg_updates:
            update_tuples(Message, ["thread_id", "routing", "state", "direction"], msg_updates)
        if part_updates:
            update_tuples(Participant, ["contact_id"], part_updates)
        if keys:
            insert_tuples(MessageKey, ["team_id", "message_id", "key"], keys, ignore_conflicts=True)
        if relinked:
            keep = {(c, mid) for _, c, _, mid, _ in links}
            stale = [
                pk
                for pk, c, mid in MessageContact.objects.filter(message_id__in=_each(relinked)).values_list(
                    "id", "contact_id", "message_id"
                )
                if (c, mid) not in keep
            ]
            if stale:
                MessageContact.objects.filter(pk__in=stale).delete()
        if links:
            insert_tuples(
                MessageContact,
                ["team_id", "contact_id", "company_id", "message_id", "date"],
                links,
                ignore_conflicts=True,
            )

        # Thread rows: counts and dates from the messages, participants, deals, verification. Threads
        # created in this batch are inserted whole (their reserved ids are already on the messages).
        ids = {t for t in (tid(x) for x in self.touched) if t is not None}
        stats = {
            r["thread_id"]: r
            for r in Message.objects.filter(thread_id__in=_each(ids))
            .values("thread_id")
            .annotate(n=Count("id"), first=Min("date"), last=Max("date"))
        }
        thread_rows: list[tuple[Any, ...]] = []
        new_rows: list[tuple[Any, ...]] = []
        empty: list[int] = []
        now = timezone.now()
        for t in ids:
            s = stats.get(t)
            st = self.threads.get(t)
            if t in self.created:
                if s is None or st is None:
                    continue
                claimed = tid(st.claimed)
                new_rows.append(
                    (
                        t,
                        team_id,
                        st.subject,
                        st.normalized_subject,
                        s["first"],
                        s["last"],
                        s["n"],
                        st.deal_id,
                        now,
                        sorted(st.participants),
                        st.verification,
                        claimed if claimed != t else None,
                        st.deal_source,
                        st.deal_candidates,
                    )
                )
                continue
            if s is None:
                empty.append(t)
                continue
            if st is None:
                continue
            thread_rows.append(
                (
                    t,
                    s["n"],
                    s["first"],
                    s["last"],
                    sorted(st.participants),
                    st.deal_id,
                    st.deal_source,
                    st.deal_candidates,
                )
            )
        if new_rows:
            insert_tuples(Thread, _THREAD_INSERT, new_rows)
        if thread_rows:
            update_tuples(
                Thread,
                [
                    "message_count",
                    "first_message_at",
                    "last_message_at",
                    "participants",
                    "deal_id",
                    "deal_source",
                    "deal_candidates",
                ],
                thread_rows,
            )
        if empty:
            Thread.objects.filter(pk__in=empty, message_count__gte=0).exclude(
                placements__isnull=False
            ).delete()


_THREAD_INSERT = [
    "id",
    "team_id",
    "subject",
    "normalized_subject",
    "first_message_at",
    "last_message_at",
    "message_count",
    "deal_id",
    "created_at",
    "participants",
    "verification",
    "claimed_thread_id",
    "deal_source",
    "deal_candidates",
]


def _each(values: Iterable[int] | Iterable[str]) -> RawSQL | list[Any]:
    """The right-hand side of ``field__in=`` for a batch's long value lists: ONE JSON parameter
    unnested by the database (``jsonb_array_elements_text`` / ``json_each``) instead of one placeholder
    per value, which Django and the driver's client-side binding pay for per value and per query."""
    items = list(values)
    if len(items) < 32:
        return items
    doc = json.dumps(items)
    if connection.vendor == "postgresql":
        if isinstance(items[0], int):
            return RawSQL("SELECT v::bigint FROM jsonb_array_elements_text(%s::jsonb) AS v", [doc])
        return RawSQL("SELECT v FROM jsonb_array_elements_text(%s::jsonb) AS v", [doc])
    if connection.vendor == "sqlite":
        return RawSQL("SELECT value FROM json_each(%s)", [doc])
    return items


def _starts(date: datetime | None, first: datetime | None) -> bool:
    """Whether a message dated ``date`` is (or may be) the first of a thread starting at ``first``."""
    return first is None or date is None or date <= first


def _reserve_ids(model: Any, n: int, after: int = 0) -> list[int]:
    """``n`` new primary keys for ``model``, taken from its sequence before the rows exist, so that
    routing records and messages name the real thread at once (rows are inserted at the end of the
    batch). PostgreSQL: ``nextval`` of the identity sequence. SQLite: past the AUTOINCREMENT counter, the
    largest id and ``after`` (the batch's earlier reservation, not inserted yet); safe because the
    batch's transaction holds the database's write lock (IMMEDIATE) until the rows are in."""
    table = model._meta.db_table
    pk = model._meta.pk.column
    with connection.cursor() as cur:
        if connection.vendor == "postgresql":
            cur.execute(
                "SELECT nextval(pg_get_serial_sequence(%s, %s)) FROM generate_series(1, %s)", [table, pk, n]
            )
            return sorted(r[0] for r in cur.fetchall())
        quoted = connection.ops.quote_name(table)
        cur.execute(
            f"SELECT MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = %s), 0), "  # noqa: S608
            f"COALESCE((SELECT MAX({connection.ops.quote_name(pk)}) FROM {quoted}), 0))",  # model metadata
            [table],
        )
        row = cur.fetchone()
        base = max(int(row[0]) if row else 0, after)
        return list(range(base + 1, base + n + 1))


