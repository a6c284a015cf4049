"""The two-way relay: ``reply+<token>@<relay domain>`` addresses, routed by the SMTP envelope only.

Tokens (core.tokens.make_relay_token): 128 random bits + a 64-bit HMAC, lower-case base32 (safe
against case folding); the random part is stored in :class:`RelayToken`, so a token can be revoked.

* kind ``client`` — the Reply-To of our mail. A reply from a thread participant is stored in the raw
  store (kind ``lmtp``) and so joins the thread; anything else is held for review. When the token
  says so, the reply is also forwarded to the owner's personal address, with an ``owner`` token as
  its Reply-To.
* kind ``owner`` — only the owner's registered addresses (envelope sender) with a passing DKIM/SPF
  verdict from a trusted ``Authentication-Results`` may use it; the answer is sent to the client from
  the company mailbox (the client never sees the personal address). Others: 550, or held.

No loops: nothing automatic (Auto-Submitted, Precedence, List-*, null sender, DSNs, our own
``X-Mailroom-Relay`` header) is ever forwarded or relayed, and relayed mail is rate-limited per
sender and thread. What the endpoint accepts is limited per relay token and per team
(``relay_quota``: counted in the database, in the transaction that commits each message).
"""

from __future__ import annotations

import base64
import email
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from email import policy as email_policy
from typing import Any

import authres
from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from mailroom.conversations.models import Message, Participant, Source
from mailroom.core.errors import Conflict
from mailroom.core.tokens import b32, make_relay_token, parse_relay_token, sign
from mailroom.events.models import Event
from mailroom.events.services import event_record
from mailroom.ingest.rawstore import IncomingRaw, store_batch
from mailroom.mailboxes.models import Mailbox
from mailroom.outbound.compose import Attachment
from mailroom.outbound.models import (
    MailboxRelaySettings,
    OutboxMessage,
    PersonalAddress,
    RelayHold,
    RelayToken,
)
from mailroom.outbound.relay_quota import (
    RelayQuotaExceeded,
    quota_reply_text,
    relay_quota_consume,
    relay_quota_prune,
    relay_quota_reached,
)
from mailroom.parsing.headers import parse_addresses, summarize_headers
from mailroom.parsing.rawheaders import HeaderBlock, parse_header_block

log = logging.getLogger(__name__)

RELAY_HEADER = "X-Mailroom-Relay"
RATE_LIMIT_PER_HOUR = 20  # relayed mails (forwards + owner answers) per thread / per sender


def relay_domain() -> str:
    return (settings.MAILROOM_RELAY_DOMAIN or "").strip().lower()


def relay_address(token: str) -> str:
    return f"reply+{token}@{relay_domain()}"


def relay_token_create(
    *,
    kind: str,
    mailbox: Mailbox,
    owner: Any,
    thread_id: int | None,
    root_message_id: str = "",
    forward_to_owner: bool = False,
    counterpart: str = "",
    source_message: Message | None = None,
) -> RelayToken:
    token, token_id = make_relay_token()
    return RelayToken.objects.create(
        token_id=token_id, token=token, kind=kind, team_id=mailbox.team_id, mailbox=mailbox,
        owner=owner if getattr(owner, "pk", None) else None, thread_id=thread_id,
        root_message_id=root_message_id, forward_to_owner=forward_to_owner, counterpart=counterpart,
        source_message=source_message,
    )


def relay_token_revoke(*, token: RelayToken) -> None:
    RelayToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())


def parse_relay_recipient(address: str) -> str | None:
    """The stored token id of ``reply+<token>@<relay domain>`` when the signature holds, else None."""
    domain = relay_domain()
    local, at, dom = address.strip().strip("<>").rpartition("@")
    if not at or not domain or dom.lower() != domain:
        return None
    tag, plus, token = local.partition("+")
    if not plus or tag.lower() != "reply":
        return None
    return parse_relay_token(token.lower())


def relay_token_lookup(address: str) -> RelayToken | None:
    token_id = parse_relay_recipient(address)
    if token_id is None:
        return None
    return (RelayToken.objects.select_related("mailbox", "owner")
            .filter(token_id=token_id, revoked_at__isnull=True).first())


def relay_owner_for(*, mailbox: Mailbox, settings_row: MailboxRelaySettings | None, user: Any,
                    parent: Message | None, deal_id: int | None, per_send: bool | None) -> tuple[Any, bool]:
    """Who owns the conversation (deal owner, else the mailbox's owner, else the sender) and whether
    replies are forwarded to his personal address (per send, else per deal owner, else per mailbox)."""
    from mailroom.crm.models import Deal

    deal = None
    if deal_id is not None:
        deal = Deal.objects.filter(team_id=mailbox.team_id, id=deal_id).first()
    elif parent is not None and parent.thread_id:
        deal = Deal.objects.filter(threads__id=parent.thread_id).first()
    owner = (deal.owner if deal is not None and deal.owner_id else None) or (
        settings_row.owner if settings_row is not None and settings_row.owner_id else None) or user
    if per_send is not None:
        return owner, per_send
    if deal is not None and deal.owner_id and PersonalAddress.objects.filter(
            user_id=deal.owner_id, forward_deal_replies=True).exists():
        return owner, True
    return owner, bool(settings_row is not None and settings_row.forward_to_owner)


# --- loop prevention -------------------------------------------------------------------------------
def relay_header_value(kind: str) -> str:
    sig = b32(sign(f"{kind}:{relay_domain()}".encode(), "relayhdr", 10))
    return f"{kind}; sig={sig}"


def is_own_relay_header(value: str) -> bool:
    kind, _, rest = value.partition(";")
    return rest.strip() == f"sig={relay_header_value(kind.strip()).partition('sig=')[2]}"


def automatic_reason(block: HeaderBlock, mail_from: str) -> str | None:
    """Why this mail must never be relayed or answered automatically (RFC 3834), or None."""
    if not mail_from or mail_from == "<>":
        return "null envelope sender (bounce)"
    auto = block.get("auto-submitted").strip().lower()
    if auto and not auto.startswith("no"):
        return f"Auto-Submitted: {auto}"
    prec = block.get("precedence").strip().lower()
    if prec in {"bulk", "list", "junk", "auto_reply"}:
        return f"Precedence: {prec}"
    for name in ("list-id", "list-unsubscribe", "list-post", "x-autoreply", "x-autorespond", "x-auto-response-suppress"):
        if name in block and not (name == "x-auto-response-suppress" and block.get(name).strip().lower() in {"", "none"}):
            return f"{name} present"
    ctype = block.get("content-type").lower()
    if ctype.startswith("multipart/report"):
        return "delivery/disposition report"
    local = mail_from.lower().partition("@")[0]
    if local in {"mailer-daemon", "postmaster"} or local.startswith(("owner-", "bounce")) or local.endswith("-request"):
        return f"automatic sender {local}"
    for value in block.get_all("x-mailroom-relay"):
        if is_own_relay_header(value):
            return "our own relayed mail"
    return None


def auth_verdict(block: HeaderBlock, sender: str, raw: bytes = b"") -> bool:
    """True when Mailroom's own DKIM check finds a valid signature aligned with the sender's domain
    (``MAILROOM_DKIM_VERIFY``), or a trusted Authentication-Results says DKIM (d= the sender's domain)
    or SPF (smtp.mailfrom in the sender's domain) passed. Trusted: authserv-id in
    MAILROOM_TRUSTED_AUTHSERV_IDS (the receiving MTA must strip incoming headers with its own id,
    RFC 8601 section 5)."""
    if not getattr(settings, "MAILROOM_RELAY_REQUIRE_AUTH", True):
        return True
    if raw and settings.MAILROOM_DKIM_VERIFY:
        from mailroom.parsing.authn import verify_dkim_signatures
        from mailroom.parsing.dns import resolver_for

        dnsfunc = resolver_for(settings.MAILROOM_DNS_SERVERS, settings.MAILROOM_DNS_TIMEOUT)
        if verify_dkim_signatures(raw, dnsfunc, aligned_with=sender.lower().rpartition("@")[2])[1]:
            return True
    trusted = {t.lower() for t in settings.MAILROOM_TRUSTED_AUTHSERV_IDS}
    domain = sender.lower().rpartition("@")[2]
    for value in block.get_all("authentication-results"):
        try:
            header = authres.AuthenticationResultsHeader.parse("Authentication-Results: " + value)
        except Exception:  # authres raises a family of its own errors on junk
            log.debug("relay.bad_authentication_results", exc_info=True)
            continue
        if str(header.authserv_id).lower() not in trusted:
            continue
        for res in header.results:
            if str(res.result).lower() != "pass":
                continue
            props = {(p.type, p.name): str(p.value).lower() for p in res.properties}
            if res.method == "dkim" and props.get(("header", "d"), "") == domain:
                return True
            if res.method == "spf" and props.get(("smtp", "mailfrom"), "").rpartition("@")[2] == domain:
                return True
    return False


def _rate_exceeded(*, thread_id: int | None, token: RelayToken) -> bool:
    since = timezone.now() - timedelta(hours=1)
    qs = OutboxMessage.objects.filter(
        origin__in=[OutboxMessage.Origin.RELAY_FORWARD, OutboxMessage.Origin.RELAY_OWNER], created_at__gte=since)
    q = Q(relay_token__root_message_id=token.root_message_id) if token.root_message_id else Q(relay_token=token)
    if thread_id:
        q |= Q(thread_id=thread_id)
    return qs.filter(q).count() >= RATE_LIMIT_PER_HOUR


# --- threads and senders ---------------------------------------------------------------------------
def token_thread_id(token: RelayToken) -> int | None:
    if token.thread_id:
        return token.thread_id
    if token.root_message_id:
        tid = (Message.objects.filter(team_id=token.team_id, message_id=token.root_message_id)
               .exclude(thread__isnull=True).values_list("thread_id", flat=True).first())
        return tid
    return None


def lmtp_source_recipient(key: str) -> str:
    """The relay address of an LMTP source key ``lmtp:<rcpt>:<content hash>`` ("" for other keys)."""
    kind, sep, rest = key.partition(":")
    if kind != "lmtp" or not sep:
        return ""
    rcpt, sep, _hash = rest.rpartition(":")
    return rcpt if sep else ""


def relay_threads_for_messages(message_pks: Sequence[int]) -> dict[int, int]:
    """Message pk -> thread of the client relay token the message was delivered to (by the SMTP
    envelope: the LMTP source key, never a header), for the linker's ``relay_token`` rule.

    Only signed addresses of this deployment's relay domain count, only ``client`` tokens (owner
    answers never enter the raw store), only of the message's own team, and a token revoked before
    the message arrived is no evidence. Messages without such a source are left out."""
    out: dict[int, int] = {}
    pks = list(dict.fromkeys(message_pks))
    if not pks or not relay_domain():
        return out
    wanted: dict[int, list[str]] = {}  # message pk -> token ids, in source order
    for i in range(0, len(pks), 900):
        for msg_pk, key in (Source.objects.filter(message_id__in=pks[i : i + 900], kind=Source.Kind.LMTP)
                            .exclude(key__isnull=True).order_by("id").values_list("message_id", "key")):
            token_id = parse_relay_recipient(lmtp_source_recipient(key or ""))
            if token_id is not None:
                wanted.setdefault(msg_pk, []).append(token_id)
    if not wanted:
        return out
    tokens = {t.token_id: t for t in RelayToken.objects.filter(
        token_id__in={tid for ids in wanted.values() for tid in ids}, kind=RelayToken.Kind.CLIENT)}
    messages = {pk: (team, received) for pk, team, received in Message.objects.filter(pk__in=list(wanted))
                .values_list("pk", "team_id", "received_at")}
    for msg_pk, token_ids in wanted.items():
        team_id, received_at = messages.get(msg_pk, (None, None))
        for tid in token_ids:
            token = tokens.get(tid)
            if token is None or token.team_id != team_id:
                continue
            if token.revoked_at is not None and (received_at is None or token.revoked_at <= received_at):
                continue
            thread_id = token_thread_id(token)
            if thread_id is not None:
                out[msg_pk] = thread_id
                break
    return out


def relay_thread_for_message(message_pk: int) -> int | None:
    """The thread of the relay token ``message_pk`` was delivered to, or None (see
    :func:`relay_threads_for_messages`, the batch form)."""
    return relay_threads_for_messages([message_pk]).get(message_pk)


def allowed_client_senders(token: RelayToken) -> set[str]:
    allowed: set[str] = set()
    for to, cc, bcc in OutboxMessage.objects.filter(
            Q(relay_token=token) | Q(message_id=token.root_message_id)).values_list("to", "cc", "bcc"):
        allowed.update(a.lower() for a in (*to, *cc, *bcc))
    thread_id = token_thread_id(token)
    if thread_id:
        allowed.update(a.lower() for a in Participant.objects.filter(message__thread_id=thread_id)
                       .values_list("address", flat=True))
    return allowed


def personal_addresses(user: Any) -> set[str]:
    if user is None:
        return set()
    addrs = {a.lower() for a in PersonalAddress.objects.filter(user=user).values_list("address", flat=True)}
    if getattr(user, "email", ""):
        addrs.add(user.email.lower())
    return addrs


# --- receiving -------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RelayReply:
    code: int
    text: str

    def line(self) -> str:
        return f"{self.code} {self.text}"


def relay_check_recipient(address: str) -> RelayReply:
    """RCPT TO: 550 for unknown/forged/revoked tokens (no side effect), 451 when the address's or
    its team's quota is used up for now (relay_quota), 250 otherwise."""
    if not relay_domain():
        return RelayReply(550, "5.1.1 relay domain not configured")
    token = relay_token_lookup(address)
    if token is None:
        return RelayReply(550, "5.1.1 unknown or revoked relay address")
    scope = relay_quota_reached(token=token)
    if scope is not None:
        return RelayReply(451, quota_reply_text(scope))
    return RelayReply(250, "2.1.5 OK")


# (answer, whether a new message was accepted: it counts against the quotas)
_Outcome = tuple[RelayReply, bool]


def _hold(token: RelayToken, mail_from: str, rcpt: str, raw: bytes, reason: str) -> _Outcome:
    RelayHold.objects.create(team_id=token.team_id, token=token, mail_from=mail_from[:320], rcpt_to=rcpt[:320],
                             reason=reason[:300], raw=raw)
    log.info("relay.held", extra={"token": token.pk, "reason": reason})
    return RelayReply(250, "2.0.0 held for review"), True


def relay_receive(*, mail_from: str, rcpt: str, raw: bytes) -> RelayReply:
    """Handle one message for one relay recipient. Answers 250 only after everything is committed;
    451 (nothing kept, the MTA retries later) when the address's or its team's quota is used up.
    A new message is counted against both quotas in the transaction that commits it."""
    token = relay_token_lookup(rcpt)
    if token is None:
        return RelayReply(550, "5.1.1 unknown or revoked relay address")
    scope = relay_quota_reached(token=token)
    if scope is not None:
        return RelayReply(451, quota_reply_text(scope))
    sender = mail_from.strip("<>").lower()
    block, _ = parse_header_block(raw)
    try:
        with transaction.atomic():
            if token.kind == RelayToken.Kind.OWNER:
                reply, accepted = _receive_owner_answer(token, sender, rcpt, raw, block)
            else:
                reply, accepted = _receive_client_reply(token, sender, rcpt, raw, block)
            prune = accepted and relay_quota_consume(token=token)
    except RelayQuotaExceeded as exc:  # another delivery took the last of it since the check: rolled back
        return RelayReply(451, quota_reply_text(exc.scope))
    if prune:  # once per team and window, after the commit (its own short transaction)
        try:
            relay_quota_prune()
        except Exception:  # the message is committed; old counters go next time
            log.warning("relay.quota_prune_failed", exc_info=True)
    return reply


def _receive_client_reply(token: RelayToken, sender: str, rcpt: str, raw: bytes, block: HeaderBlock) -> _Outcome:
    automatic = automatic_reason(block, sender)
    if automatic is None or automatic != "our own relayed mail":
        allowed = allowed_client_senders(token)
        if sender and sender not in allowed and automatic is None:
            return _hold(token, sender, rcpt, raw, f"sender {sender} is not a participant of the thread")
    if automatic == "our own relayed mail":
        return _hold(token, sender, rcpt, raw, automatic)
    _, new = _store_client_reply(token, rcpt, raw, forward=automatic is None)
    return RelayReply(250, "2.0.0 stored"), new


def _store_client_reply(token: RelayToken, rcpt: str, raw: bytes, *, forward: bool) -> tuple[int, bool]:
    """Store a client's reply to a relay address (it joins the thread); forward it to the owner when
    the token says so. Returns the message id and whether this delivery is new (not a redelivery of
    the same message to the same address)."""
    summary = summarize_headers(raw)
    res = store_batch(
        team_id=token.team_id, kind="lmtp", mailbox=token.mailbox, direction=Message.Direction.INCOMING,
        items=[IncomingRaw(raw=raw, key=f"lmtp:{rcpt.lower()}:{summary.content_hash}", internal_date=timezone.now(),
                           summary=summary)],
        live=True,
    )
    msg_pk = res.message_pks[0]
    if res.new_messages:  # not when the same reply already came in through the INBOX
        event_record(team_id=token.team_id, kind=Event.Kind.MESSAGE_RECEIVED,
                     payload={"message": msg_pk, "message_id": summary.message_id, "via": "relay",
                              "mailbox_id": token.mailbox_id})
    if res.new_sources and token.forward_to_owner and forward:
        relay_forward(token=token, message=Message.objects.get(pk=msg_pk), raw=raw)
    return msg_pk, bool(res.new_sources)


def _receive_owner_answer(token: RelayToken, sender: str, rcpt: str, raw: bytes, block: HeaderBlock) -> _Outcome:
    if sender not in personal_addresses(token.owner):
        return RelayReply(550, "5.7.1 this relay address accepts mail from its owner only"), False
    automatic = automatic_reason(block, sender)
    if automatic is not None:
        return _hold(token, sender, rcpt, raw, f"not relayed: {automatic}")
    if not auth_verdict(block, sender, raw):
        return _hold(token, sender, rcpt, raw, "sender authentication (DKIM/SPF) did not pass")
    thread_id = token_thread_id(token)
    if _rate_exceeded(thread_id=thread_id, token=token):
        return _hold(token, sender, rcpt, raw, "relay rate limit exceeded")
    if token.source_message is None or not token.counterpart:
        return _hold(token, sender, rcpt, raw, "the forwarded message is gone")
    _, created = _relay_owner_answer(token, raw)
    return RelayReply(250, "2.0.0 relayed"), created


def _relay_owner_answer(token: RelayToken, raw: bytes) -> tuple[OutboxMessage, bool]:
    """Send the owner's answer to the client from the company mailbox (idempotent per content).
    Returns the outbox row and whether it is new."""
    from mailroom.outbound.services import ComposeInput, outbox_create

    parent = token.source_message
    assert parent is not None  # checked by the callers
    text, html, attachments = extract_body(raw)
    summary = summarize_headers(raw)
    data = ComposeInput(
        to=(token.counterpart,), text=text, html=html, mode="reply", relay_to_owner=True,
        idempotency_key=f"relay-owner:{token.token_id}:{summary.content_hash}",
    )
    row, created = outbox_create(
        user=None, mailbox=token.mailbox, data=data, parent=parent, origin=OutboxMessage.Origin.RELAY_OWNER,
        created_by=token.owner, extra_headers=[(RELAY_HEADER, relay_header_value("answer"))],
        source_message=parent, extra_attachments=attachments,
    )
    return row, created


# --- review of held mail ---------------------------------------------------------------------------
def _review(hold: RelayHold) -> RelayHold:
    locked = RelayHold.objects.select_for_update(of=("self",)).select_related("token", "token__mailbox").get(pk=hold.pk)
    if locked.reviewed_at is not None:
        raise Conflict(f"held relay mail {hold.pk} was already {locked.decision or 'reviewed'}")
    return locked


def relay_hold_release(*, hold: RelayHold, user: Any) -> RelayHold:
    """A reviewer vouches for held mail: a client reply joins its thread (and is forwarded to the
    owner when its relay address says so); an owner's answer goes to the client. Only mail of a
    live relay address can be released; the checks that held it are the reviewer's to judge."""
    with transaction.atomic():
        locked = _review(hold)
        token = locked.token
        if token is None or token.revoked_at is not None:
            raise Conflict(f"held relay mail {hold.pk}: its relay address is revoked; it cannot be released")
        raw = bytes(locked.raw)
        if token.kind == RelayToken.Kind.OWNER:
            if token.source_message is None or not token.counterpart:
                raise Conflict(f"held relay mail {hold.pk}: the message it answers is gone; it cannot be released")
            locked.outbox, _ = _relay_owner_answer(token, raw)
        else:
            block, _ = parse_header_block(raw)
            automatic = automatic_reason(block, locked.mail_from)
            locked.message_id, _ = _store_client_reply(token, locked.rcpt_to, raw, forward=automatic is None)
        locked.decision, locked.reviewed_at, locked.reviewed_by = RelayHold.Decision.RELEASED, timezone.now(), user
        locked.save(update_fields=["decision", "reviewed_at", "reviewed_by", "message", "outbox"])
    log.info("relay.hold_released", extra={"hold": hold.pk})
    return locked


def relay_hold_reject(*, hold: RelayHold, user: Any) -> RelayHold:
    with transaction.atomic():
        locked = _review(hold)
        locked.decision, locked.reviewed_at, locked.reviewed_by = RelayHold.Decision.REJECTED, timezone.now(), user
        locked.save(update_fields=["decision", "reviewed_at", "reviewed_by"])
    return locked


def extract_body(raw: bytes) -> tuple[str, str, list[Attachment]]:
    """Text, HTML and attachments of a message (the owner's answer), via the stdlib parser."""
    msg = email.message_from_bytes(raw, policy=email_policy.default)
    text = html = ""
    plain = msg.get_body(("plain",))  # type: ignore[attr-defined]
    if plain is not None:
        text = str(plain.get_content()).replace("\r\n", "\n")
    rich = msg.get_body(("html",))  # type: ignore[attr-defined]
    if rich is not None:
        html = str(rich.get_content())
    atts: list[Attachment] = []
    for part in msg.iter_attachments():  # type: ignore[attr-defined]
        try:
            data = part.get_payload(decode=True) or b""
        except Exception:  # undecodable part: skip it rather than refuse the answer
            log.warning("relay.undecodable_attachment", exc_info=True)
            continue
        atts.append(Attachment(filename=part.get_filename() or "attachment", content_type=part.get_content_type(),
                               data=bytes(data)))
    return text, html, atts


def relay_forward(*, token: RelayToken, message: Message, raw: bytes) -> OutboxMessage | None:
    """Forward a client's reply to the owner's personal address, answerable through an owner token."""
    from mailroom.outbound.services import ComposeInput, outbox_create

    owner = token.owner
    if owner is None:
        return None
    personal = list(PersonalAddress.objects.filter(user=owner).order_by("id").values_list("address", flat=True))
    target = personal[0] if personal else (owner.email or "")
    if not target:
        return None
    thread_id = token_thread_id(token) or message.thread_id
    if _rate_exceeded(thread_id=thread_id, token=token):
        log.warning("relay.forward_rate_limited", extra={"token": token.pk})
        return None
    block, _ = parse_header_block(raw)
    sender = parse_addresses(block.get_all("reply-to")) or parse_addresses(block.get_all("from"))
    if not sender:
        return None
    counterpart = sender[0].address
    owner_token = relay_token_create(kind=RelayToken.Kind.OWNER, mailbox=token.mailbox, owner=owner,
                                     thread_id=thread_id, root_message_id=token.root_message_id,
                                     counterpart=counterpart, source_message=message)
    text, _, _ = extract_body(raw)
    who = f"{sender[0].name} <{counterpart}>" if sender[0].name else counterpart
    intro = (f"{who} wrote in \"{message.subject}\" (to {token.mailbox.email}).\n"
             f"Reply to this email to answer from {token.mailbox.email}; your personal address stays private.\n\n")
    data = ComposeInput(
        to=(target,), subject=f"[Mailroom] {message.subject}"[:900], text=intro + text, signature=False,
        auto_submitted="auto-generated", idempotency_key=f"relay-forward:{message.pk}:{owner.pk}",
    )
    row, _ = outbox_create(
        user=None, mailbox=token.mailbox, data=data, origin=OutboxMessage.Origin.RELAY_FORWARD,
        created_by=owner, extra_headers=[(RELAY_HEADER, relay_header_value("forward"))], source_message=message,
        extra_attachments=[Attachment("original.eml", "message/rfc822", raw)], reply_to_token=owner_token,
    )
    return row


def relay_forward_due(*, limit: int = 100) -> int:
    """Forward replies that arrived through IMAP (not the relay address) in threads whose token asks
    for it. Idempotent (the forward's idempotency key is per message)."""
    tokens = {
        t.thread_id: t for t in RelayToken.objects.select_related("mailbox", "owner").filter(
            kind=RelayToken.Kind.CLIENT, forward_to_owner=True, revoked_at__isnull=True, thread__isnull=False)
    }
    if not tokens:
        return 0
    done = 0
    candidates = (Message.objects.filter(thread_id__in=list(tokens), direction=Message.Direction.INCOMING,
                                         state=Message.State.LINKED, is_auto_reply=False, is_bulk=False,
                                         bounce__isnull=True)
                  .exclude(pk__in=OutboxMessage.objects.filter(origin=OutboxMessage.Origin.RELAY_FORWARD)
                           .values("source_message_id"))
                  .select_related("raw").order_by("id")[:limit])
    for msg in candidates:
        token = tokens[msg.thread_id]
        if msg.received_at < token.created_at:
            continue
        raw = msg.raw.read()
        block, _ = parse_header_block(raw)
        if automatic_reason(block, msg.from_address or "unknown@invalid") is not None:
            continue
        with transaction.atomic():
            if relay_forward(token=token, message=msg, raw=raw) is not None:
                done += 1
    return done


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
