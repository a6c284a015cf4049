"""Linking rules: which participants become contacts, which company a new contact joins, which deal a
message lands on. Pure: values in, decisions with reasons out."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from mailroom.routing.addresses import (
    canonical_address,
    domain_matches,
    domain_of,
    is_automated_address,
    is_freemail,
)
from mailroom.routing.rules import INCOMING, OUTGOING, RuleHit

POLICY_NONE = "none"
POLICY_SENDERS = "senders"
POLICY_ALL = "all"
_POLICY_RANK = {POLICY_NONE: 0, POLICY_SENDERS: 1, POLICY_ALL: 2}
SENDER_ROLES = frozenset({"from"})
RECIPIENT_ROLES = frozenset({"to", "cc", "bcc"})


def strongest_policy(policies: Iterable[str], default: str = POLICY_SENDERS) -> str:
    """A message seen in several mailboxes follows the most permissive of their policies."""
    found = [p for p in policies if p in _POLICY_RANK]
    return max(found, key=_POLICY_RANK.__getitem__) if found else default


@dataclass(frozen=True, slots=True)
class ParticipantIn:
    role: str
    address: str
    name: str = ""


@dataclass(frozen=True, slots=True)
class ContactContext:
    policy: str
    direction: str
    is_auto_reply: bool = False
    is_bulk: bool = False
    unverified: bool = False
    own_addresses: frozenset[str] = frozenset()  # canonical
    ignore_addresses: frozenset[str] = frozenset()  # canonical
    ignore_domains: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class NewContact:
    canonical: str
    address: str
    name: str
    reason: str


@dataclass(frozen=True, slots=True)
class ContactPlan:
    create: tuple[NewContact, ...] = ()
    skipped: tuple[RuleHit, ...] = ()


def exclusion(address: str, role: str, ctx: ContactContext) -> RuleHit | None:
    """Why ``address`` must never become (or be linked as) a contact automatically, if it must not."""
    canon = canonical_address(address)
    if canon in ctx.own_addresses:
        return RuleHit("own_address", f"{address} is one of the team's mailboxes or users")
    if canon in ctx.ignore_addresses:
        return RuleHit("ignored_address", f"{address} is on the ignore list")
    d = domain_matches(domain_of(address), ctx.ignore_domains)
    if d:
        return RuleHit("ignored_domain", f"{address}: domain {d} is on the ignore list")
    if is_automated_address(address):
        return RuleHit("automated_address", f"{address} is a no-reply/automated address")
    if role in SENDER_ROLES and ctx.direction == INCOMING:
        if ctx.is_auto_reply:
            return RuleHit("automated_sender", f"{address} sent an automatic reply")
        if ctx.is_bulk:
            return RuleHit("mailing_list", f"{address} sent bulk or mailing-list mail")
    if ctx.unverified and role in SENDER_ROLES:
        return RuleHit("unverified_sender", f"{address} is not verified: no contact until a user accepts")
    return None


def plan_contacts(
    participants: Iterable[ParticipantIn], known: frozenset[str], ctx: ContactContext
) -> ContactPlan:
    """Contacts to create for unknown external participants, by the mailbox's policy."""
    create: dict[str, NewContact] = {}
    skipped: list[RuleHit] = []
    for p in participants:
        canon = canonical_address(p.address)
        if not canon or canon in known or canon in create:
            continue
        if ctx.policy == POLICY_NONE:
            continue
        sender = p.role in SENDER_ROLES and ctx.direction == INCOMING
        # The other side of a conversation: who wrote to us, or whom we wrote to (the recipients of our
        # own outgoing mail, from the CRM or the manager's own client), so both directions are on the card.
        counterpart = sender or (p.role in RECIPIENT_ROLES and ctx.direction == OUTGOING)
        if ctx.policy == POLICY_SENDERS and not counterpart:
            continue
        if p.role == "bcc" and ctx.direction == INCOMING:
            continue
        why_not = exclusion(p.address, p.role, ctx)
        if why_not is not None:
            skipped.append(why_not)
            continue
        what = "sender" if sender else "recipient" if counterpart else "participant"
        create[canon] = NewContact(
            canon,
            p.address.lower(),
            p.name,
            f"unknown {what} {p.address} created by the mailbox policy '{ctx.policy}'",
        )
    return ContactPlan(tuple(create.values()), tuple(skipped))


def company_domain(address: str) -> tuple[str | None, str]:
    """The domain a new contact's company is matched or created from, or None with the reason."""
    domain = domain_of(address)
    if not domain or "." not in domain:
        return None, f"{address} has no usable domain"
    if is_freemail(domain):
        return None, f"{domain} is a free-mail domain: no company"
    return domain, f"company from the domain {domain}"


def company_name_for(domain: str) -> str:
    """A readable default company name from a domain (``acme-corp.co.uk`` -> ``Acme-corp``)."""
    labels = domain.split(".")
    name = labels[-3] if len(labels) >= 3 and len(labels[-2]) <= 3 and len(labels[-1]) == 2 else labels[-2]
    return name[:1].upper() + name[1:] if len(labels) >= 2 else domain


@dataclass(frozen=True, slots=True)
class DealInput:
    thread_deal: int | None
    thread_deal_source: str  # "", "auto", "user"
    contact_open_deals: Mapping[int, tuple[int, ...]] = field(default_factory=dict)  # contact -> open deals
    company_open_deals: Mapping[int, tuple[int, ...]] = field(default_factory=dict)  # company -> open deals


@dataclass(frozen=True, slots=True)
class DealDecision:
    deal_id: int | None
    hit: RuleHit
    candidates: tuple[int, ...] = ()  # when ambiguous


def choose_deal(inp: DealInput) -> DealDecision:
    """A thread on a deal keeps all its messages there; else exactly one open deal of the message's
    contacts (or, failing that, of their companies) is taken; several is ambiguous (the user picks)."""
    if inp.thread_deal is not None:
        who = "a user" if inp.thread_deal_source == "user" else "the rules"
        return DealDecision(
            inp.thread_deal, RuleHit("thread_deal", f"the thread is on deal {inp.thread_deal} (set by {who})")
        )
    for level, mapping in (("contact", inp.contact_open_deals), ("company", inp.company_open_deals)):
        deals = tuple(sorted({d for ds in mapping.values() for d in ds}))
        if len(deals) == 1:
            owners = ", ".join(str(k) for k, ds in sorted(mapping.items()) if deals[0] in ds)
            return DealDecision(
                deals[0],
                RuleHit("single_open_deal", f"deal {deals[0]} is the only open deal of {level} {owners}"),
            )
        if len(deals) > 1:
            return DealDecision(
                None,
                RuleHit(
                    "deal_ambiguous",
                    f"{len(deals)} open deals of the {level}s ({', '.join(map(str, deals))}): a user picks",
                ),
                deals,
            )
    return DealDecision(None, RuleHit("no_open_deal", "no open deal for the message's contacts or companies"))
