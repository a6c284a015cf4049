"""Outbox services: compose -> outbox row (fixed bytes, fixed Message-ID) -> send -> mark sent -> Sent.

* :func:`outbox_create` validates, renders and builds the final bytes, and writes the row (idempotent
  on ``(team, idempotency_key)``) before anything is sent.
* :func:`outbox_send_due` claims due rows (lease), submits them over one connection per mailbox
  (mailboxes in parallel threads, no database work in the threads), then records every result, the
  raw-store copy (kind ``outbox``) and the events in one transaction.
* :func:`outbox_append_due` files sent mail into the Sent folder, guarded by a Message-ID search.
* :func:`outbox_retry` / :func:`outbox_cancel` are the user's levers.

A crash after the server accepted a message but before we recorded it leaves the row in ``sending``;
once its lease expires (or its worker is known dead) it is sent again with the same bytes, hence the
same Message-ID: at worst a duplicate that clients and our raw store recognise, never a lost message.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import email
import hashlib
import html as html_lib
import json
import logging
import os
import queue
import socket
import threading
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email import policy as email_policy
from email.utils import getaddresses
from typing import Any

import nh3
from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import F, Q
from django.utils import timezone
from jinja2 import TemplateError
from jinja2.sandbox import SandboxedEnvironment

from mailroom.conversations.models import Message, message_body
from mailroom.core.db import insert_rows
from mailroom.core.errors import Conflict, InvalidInput
from mailroom.core.text import check_text
from mailroom.core.tokens import make_message_id
from mailroom.events.models import Event
from mailroom.events.services import events_record
from mailroom.ingest.rawstore import IncomingRaw, store_batch
from mailroom.mailboxes.models import Folder, Mailbox
from mailroom.outbound import compose
from mailroom.outbound.compose import Addr, Attachment, Draft, HeaderInjection
from mailroom.outbound.limits import MAX_TOTAL_ATTACHMENTS, mib
from mailroom.outbound.models import (
    MailboxRelaySettings,
    OutboxMessage,
    PersonalAddress,
    RelayToken,
    Signature,
)
from mailroom.outbound.sentfolder import AppendItem, append_guarded, imap_settings_for_mailbox
from mailroom.outbound.smtp import SendResult, SmtpSettings, Submitter, backoff_seconds, settings_for_mailbox
from mailroom.parsing.headers import msgid_list, parse_addresses, parse_one_address
from mailroom.parsing.rawheaders import parse_header_block

log = logging.getLogger(__name__)

MAX_RECIPIENTS = 100


def _setting(name: str, default: float) -> float:
    """``django.conf.settings.<name>`` (read from the environment in settings.py), else ``default``."""
    return float(getattr(settings, name, default))


def lease_seconds() -> float:
    return _setting("MAILROOM_OUTBOX_LEASE_SECONDS", 300)


def retry_base_seconds() -> float:
    return _setting("MAILROOM_OUTBOX_RETRY_BASE_SECONDS", 30)


def smtp_timeout_seconds() -> float:
    return _setting("MAILROOM_OUTBOX_SMTP_TIMEOUT", 30)


def batch_size() -> int:
    """Rows claimed per round by the worker."""
    return max(1, int(_setting("MAILROOM_OUTBOX_BATCH", 500)))


def record_chunk() -> int:
    """Results recorded per durable commit while sending."""
    return max(1, int(_setting("MAILROOM_OUTBOX_RECORD_CHUNK", 250)))


def connections() -> int:
    """SMTP connections opened in parallel by one worker (at most one per mailbox unless a mailbox
    has enough mail for more)."""
    return max(1, int(_setting("MAILROOM_OUTBOX_CONNECTIONS", 4)))


# --- wake-up of the worker -------------------------------------------------------------------------
outbox_wakeup = threading.Event()


def wake_outbox() -> None:
    outbox_wakeup.set()


# --- input -----------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class AttachmentInput:
    filename: str
    content_type: str = "application/octet-stream"
    content_b64: str = field(default="", repr=False)
    inline: bool = False
    content_id: str = ""


@dataclass(frozen=True, slots=True)
class ComposeInput:
    to: tuple[str, ...] = ()
    cc: tuple[str, ...] = ()
    bcc: tuple[str, ...] = ()
    subject: str | None = None
    text: str = ""
    html: str = ""
    in_reply_to: int | None = None  # a Mailroom message id
    mode: str = "new"
    template: str | None = None
    attachments: tuple[AttachmentInput, ...] = ()
    send_at: datetime | None = None
    idempotency_key: str | None = None
    signature: bool = True
    relay_to_owner: bool | None = None  # per send: forward replies to the owner's personal address
    deal: int | None = None  # template variables / relay owner
    auto_submitted: str = ""  # "auto-replied" for automatic answers
    # Replying to an unauthenticated message whose Reply-To differs from its From: "from" or "reply_to".
    reply_to_choice: str | None = None

    def request_hash(self, mailbox_id: int) -> str:
        data = {
            "to": list(self.to), "cc": list(self.cc), "bcc": list(self.bcc), "subject": self.subject,
            "text": self.text, "html": self.html, "in_reply_to": self.in_reply_to, "mode": self.mode,
            "template": self.template,
            "attachments": [{"filename": a.filename, "content_type": a.content_type, "content_b64": a.content_b64,
                             "inline": a.inline, "content_id": a.content_id} for a in self.attachments],
            "send_at": None, "idempotency_key": None, "signature": self.signature,
            "relay_to_owner": self.relay_to_owner, "deal": self.deal, "auto_submitted": self.auto_submitted,
        }
        if self.reply_to_choice is not None:  # absent from requests hashed before it existed
            data["reply_to_choice"] = self.reply_to_choice
        data["mailbox"] = mailbox_id
        data["send_at"] = self.send_at.isoformat() if self.send_at else None
        blob = json.dumps(data, sort_keys=True, default=str, ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()


# --- checks ----------------------------------------------------------------------------------------
def _check(value: str, field_name: str) -> None:
    try:
        compose.check_header_text(value, field_name)
    except HeaderInjection as exc:
        raise InvalidInput(str(exc), field=exc.field) from exc


def check_header_fields(data: ComposeInput) -> None:
    """CR, LF or NUL in anything that ends up in a header is a 400 that names the field."""
    for name in ("to", "cc", "bcc"):
        for i, value in enumerate(getattr(data, name)):
            check_text(value, f"{name}[{i}]")
    for name in ("subject", "template", "idempotency_key"):
        check_text(getattr(data, name) or "", name)
    for i, att in enumerate(data.attachments):
        for part in ("filename", "content_type", "content_id"):
            check_text(getattr(att, part), f"attachments[{i}].{part}")
    for name in ("to", "cc", "bcc"):
        for i, value in enumerate(getattr(data, name)):
            _check(value, f"{name}[{i}]")
    _check(data.subject or "", "subject")
    _check(data.template or "", "template")
    _check(data.idempotency_key or "", "idempotency_key")
    for i, att in enumerate(data.attachments):
        _check(att.filename, f"attachments[{i}].filename")
        _check(att.content_type, f"attachments[{i}].content_type")
        _check(att.content_id, f"attachments[{i}].content_id")
    for name in ("text", "html"):
        check_text(getattr(data, name), name, multiline=True)
    if data.reply_to_choice not in (None, "from", "reply_to"):
        raise InvalidInput("reply_to_choice: must be from or reply_to", field="reply_to_choice")
    if data.auto_submitted not in ("", "auto-replied", "auto-generated"):
        raise InvalidInput("auto_submitted: must be auto-replied or auto-generated", field="auto_submitted")


def parse_recipient(value: str, field_name: str) -> Addr:
    name, addr = parse_one_address(value) if "<" in value or "(" in value else ("", value.strip())
    if not addr:
        raise InvalidInput(f"{field_name}: {value!r} is not an email address", field=field_name)
    try:
        local, domain = compose.split_address(addr)
    except ValueError as exc:
        raise InvalidInput(f"{field_name}: {value!r}: {exc}", field=field_name) from exc
    return Addr(f"{local}@{domain}", name.strip())


def _recipients(values: Sequence[str], field_name: str) -> list[Addr]:
    return [parse_recipient(v, f"{field_name}[{i}]") for i, v in enumerate(values)]


# --- the message answered --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ParentInfo:
    message_id: str
    references: tuple[str, ...]
    subject: str
    from_: tuple[Addr, ...]
    reply_to: tuple[Addr, ...]
    to: tuple[Addr, ...]
    cc: tuple[Addr, ...]
    date: str
    thread_index: str
    text: str
    raw: bytes


def _text_of(raw: bytes) -> str:
    try:
        msg = email.message_from_bytes(raw, policy=email_policy.default)
        body = msg.get_body(("plain", "html"))  # type: ignore[attr-defined]
        if body is None:
            return ""
        content = str(body.get_content())
        if body.get_content_type() == "text/html":
            content = html_to_text(content)
        return content.replace("\r\n", "\n")
    except Exception:  # a malformed parent must not block a reply
        log.warning("outbox.parent_text_failed", exc_info=True)
        return ""


def parent_info(msg: Message) -> ParentInfo:
    raw = msg.raw.read() if hasattr(msg, "raw") else b""
    block, _ = parse_header_block(raw)

    def addrs(name: str) -> tuple[Addr, ...]:
        return tuple(Addr(a.address, a.name) for a in parse_addresses(block.get_all(name)))

    return ParentInfo(
        message_id=msg.message_id,
        references=msgid_list(block.get("references")) or tuple(msg.references or ()),
        subject=msg.subject,
        from_=addrs("from") or ((Addr(msg.from_address, msg.from_name),) if msg.from_address else ()),
        reply_to=addrs("reply-to"),
        to=addrs("to"),
        cc=addrs("cc"),
        date=block.get("date"),
        thread_index=block.get("thread-index").strip(),
        text=message_body(msg.pk).text or _text_of(raw),
        raw=raw,
    )


def _reply_to_chosen(parent: Message, pinfo: ParentInfo, choice: str | None) -> tuple[Addr, ...]:
    """Whom a reply goes to when the parent has a Reply-To. An unauthenticated parent whose Reply-To
    differs from its From (anyone can write both) needs the user's explicit choice."""
    from mailroom.conversations.selectors import reply_to_risk

    if choice == "from":
        return pinfo.from_
    if choice == "reply_to":
        return pinfo.reply_to
    risk = reply_to_risk(parent)
    if risk is not None:
        reply_to, sender = risk
        raise InvalidInput(
            f"reply_to_choice: the message answered is not authenticated and its Reply-To "
            f"({', '.join(reply_to)}) differs from its From ({sender}): choose from or reply_to",
            field="reply_to_choice",
        )
    return pinfo.reply_to


def html_to_text(value: str) -> str:
    return html_lib.unescape(nh3.clean(value.replace("<br>", "\n").replace("</p>", "</p>\n"), tags=set())).strip()


def _quote(text: str) -> str:
    return "\n".join("> " + line if line else ">" for line in text.rstrip("\n").split("\n"))


# --- templates -------------------------------------------------------------------------------------
_jinja = SandboxedEnvironment(autoescape=False, keep_trailing_newline=True)
_jinja_html = SandboxedEnvironment(autoescape=True, keep_trailing_newline=True)


def template_context(*, user: Any, mailbox: Mailbox, to: Sequence[Addr], deal_id: int | None,
                     parent: Message | None) -> dict[str, Any]:
    """Plain dicts (never ORM rows) for the sandbox: contact, company, deal, user, mailbox."""
    from mailroom.crm.models import ContactEmail, Deal

    contact_d: dict[str, Any] = {}
    company_d: dict[str, Any] = {}
    deal_d: dict[str, Any] = {}
    contact = None
    if to:
        ce = (ContactEmail.objects.select_related("contact__company")
              .filter(team_id=mailbox.team_id, address=to[0].address.lower()).first())
        if ce is not None:
            contact = ce.contact
            contact_d = {"name": contact.name, "email": ce.address, "phone": contact.phone,
                         "first_name": (contact.name or "").split(" ")[0]}
            if contact.company is not None:
                company_d = {"name": contact.company.name}
        else:
            contact_d = {"name": to[0].name, "email": to[0].address, "first_name": to[0].name.split(" ")[0]}
    deal = None
    if deal_id is not None:
        deal = Deal.objects.filter(team_id=mailbox.team_id, id=deal_id).first()
        if deal is None:
            raise InvalidInput(f"deal {deal_id} not found", field="deal")
    elif parent is not None and parent.thread_id and parent.thread and parent.thread.deal_id:
        deal = parent.thread.deal
    elif contact is not None:
        deal = contact.deals.filter(status="open").order_by("-created_at").first()
    if deal is not None:
        deal_d = {"title": deal.title, "amount": str(deal.amount) if deal.amount is not None else "",
                  "stage": deal.stage, "status": deal.status}
        if not company_d and deal.company is not None:
            company_d = {"name": deal.company.name}
    user_d: dict[str, Any] = {}
    if user is not None:
        user_d = {"name": (user.get_full_name() or user.get_username()), "first_name": user.first_name,
                  "last_name": user.last_name, "email": user.email}
    return {"contact": contact_d, "company": company_d, "deal": deal_d, "user": user_d,
            "mailbox": {"email": mailbox.email, "name": mailbox.display_name or mailbox.name}}


def render_template(source: str, context: dict[str, Any], *, html: bool, field_name: str) -> str:
    try:
        env = _jinja_html if html else _jinja
        return env.from_string(source).render(**context)
    except TemplateError as exc:
        raise InvalidInput(f"{field_name}: template error: {exc}", field="template") from exc


# --- compose ---------------------------------------------------------------------------------------
def message_id_domain(mailbox: Mailbox) -> str:
    """The domain of our Message-IDs, in its ASCII form (a value stored before fields were validated
    that is no host name falls back to the configured domain)."""
    from mailroom.mailboxes import validation

    for candidate in (mailbox.message_id_domain, mailbox.email.rpartition("@")[2]):
        if candidate:
            try:
                return validation.hostname(candidate, "message_id_domain")
            except InvalidInput:
                continue
    return str(settings.MAILROOM_MESSAGE_ID_DOMAIN).lower()


def _relay_settings(mailbox: Mailbox) -> MailboxRelaySettings | None:
    return MailboxRelaySettings.objects.filter(mailbox=mailbox).first()


def _signature(user: Any, mailbox: Mailbox) -> Signature | None:
    if user is None or not getattr(user, "pk", None):
        return None
    return (Signature.objects.filter(user=user, is_default=True)
            .filter(Q(mailbox=mailbox) | Q(mailbox__isnull=True)).order_by(F("mailbox_id").desc(nulls_last=True))
            .first())


def _too_many_attachment_bytes(index: int) -> InvalidInput:
    return InvalidInput(
        f"attachments: more than {mib(MAX_TOTAL_ATTACHMENTS)} ({MAX_TOTAL_ATTACHMENTS} bytes) in total "
        f"(attachments[{index}] goes over); send larger files as links",
        field="attachments",
    )


def _decode_attachments(items: Sequence[AttachmentInput]) -> list[Attachment]:
    out: list[Attachment] = []
    total = 0
    for i, att in enumerate(items):
        # refused before decoding: base64 of n characters holds at least 3 * (n // 4) - 2 bytes
        if total + 3 * (len(att.content_b64) // 4) - 2 > MAX_TOTAL_ATTACHMENTS:
            raise _too_many_attachment_bytes(i)
        try:
            data = base64.b64decode(att.content_b64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidInput(f"attachments[{i}].content: not valid base64", field=f"attachments[{i}].content") from exc
        total += len(data)
        if total > MAX_TOTAL_ATTACHMENTS:
            raise _too_many_attachment_bytes(i)
        ctype = att.content_type.strip().lower() or "application/octet-stream"
        if "/" not in ctype or any(c in ctype for c in ' ;"'):
            raise InvalidInput(f"attachments[{i}].content_type: {ctype!r} is not a MIME type",
                               field=f"attachments[{i}].content_type")
        out.append(Attachment(filename=att.filename[:255], content_type=ctype, data=data,
                              inline=att.inline, content_id=att.content_id))
    return out


def outbox_create(
    *,
    user: Any,
    mailbox: Mailbox,
    data: ComposeInput,
    parent: Message | None = None,
    origin: str = OutboxMessage.Origin.COMPOSE,
    created_by: Any = None,
    extra_headers: Sequence[tuple[str, str]] = (),
    source_message: Message | None = None,
    extra_attachments: Sequence[Attachment] = (),
    reply_to_token: RelayToken | None = None,
    now: datetime | None = None,
    _cache: dict[str, Any] | None = None,
) -> tuple[OutboxMessage, bool]:
    """Create (or find, by idempotency key) the outbox row for ``data``. Returns (row, created).

    ``user`` is the requesting user (access checks); internal callers (the relay) pass None and
    resolve ``parent`` themselves.
    """
    check_header_fields(data)
    now = now or timezone.now()
    key = data.idempotency_key or f"auto:{uuid.uuid4().hex}"
    req_hash = data.request_hash(mailbox.pk)
    cache = _cache if _cache is not None else {}
    known_keys: set[str] | None = cache.get("new_keys")
    if known_keys is None or key not in known_keys:  # a batch pre-checks its keys in one query
        existing = OutboxMessage.objects.filter(team_id=mailbox.team_id, idempotency_key=key).first()
        if existing is not None:
            return _same_or_conflict(existing, req_hash), False

    if data.mode not in OutboxMessage.Mode.values:
        raise InvalidInput(f"mode: must be one of {', '.join(OutboxMessage.Mode.values)}", field="mode")
    if parent is None and data.in_reply_to is not None:
        from mailroom.outbound.access import access_message_in_team

        parent = access_message_in_team(user, data.in_reply_to, mailbox.team_id)
    if data.mode != OutboxMessage.Mode.NEW and parent is None:
        raise InvalidInput(f"in_reply_to: required for mode {data.mode}", field="in_reply_to")
    pinfo = parent_info(parent) if parent is not None else None

    to = _recipients(data.to, "to")
    cc = _recipients(data.cc, "cc")
    bcc = _recipients(data.bcc, "bcc")
    own = {mailbox.email.lower()}
    relay_domain = (settings.MAILROOM_RELAY_DOMAIN or "").lower()

    def not_own(addrs: Sequence[Addr]) -> list[Addr]:
        return [a for a in addrs if a.address.lower() not in own
                and not (relay_domain and a.address.lower().endswith("@" + relay_domain))]

    if pinfo is not None and not (to or cc or bcc):
        parent_is_ours = bool(pinfo.from_) and pinfo.from_[0].address.lower() in own
        if data.mode in (OutboxMessage.Mode.REPLY, OutboxMessage.Mode.REPLY_ALL):
            answer_to = pinfo.reply_to or pinfo.from_
            if not parent_is_ours and parent is not None and pinfo.reply_to:
                answer_to = _reply_to_chosen(parent, pinfo, data.reply_to_choice)
            to = list(pinfo.to) if parent_is_ours else list(answer_to)
            to = not_own(to)
            if data.mode == OutboxMessage.Mode.REPLY_ALL:
                seen = {a.address for a in to}
                if not parent_is_ours:
                    to += [a for a in not_own(list(pinfo.to)) if a.address not in seen]
                    seen = {a.address for a in to}
                cc = [a for a in not_own(list(pinfo.cc)) if a.address not in seen]
    if not (to or cc or bcc):
        raise InvalidInput("to: at least one recipient is required", field="to")
    envelope = list(dict.fromkeys(a.address.lower() for a in (*to, *cc, *bcc)))
    if len(envelope) > MAX_RECIPIENTS:
        raise InvalidInput(f"to: at most {MAX_RECIPIENTS} recipients", field="to")

    # Template, subject, bodies.
    subject = data.subject
    text, html_body = data.text, data.html
    if data.template:
        from mailroom.outbound.access import access_template_in_team

        tpl = access_template_in_team(user, data.template, mailbox.team_id) if user is not None else None
        if tpl is None:
            raise InvalidInput("template: not available here", field="template")
        ctx = template_context(user=user, mailbox=mailbox, to=to, deal_id=data.deal, parent=parent)
        if subject is None and tpl.subject:
            subject = render_template(tpl.subject, ctx, html=False, field_name="subject").strip()
        if not text and tpl.text:
            text = render_template(tpl.text, ctx, html=False, field_name="text")
        if not html_body and tpl.html:
            html_body = render_template(tpl.html, ctx, html=True, field_name="html")
    if subject is None:
        if pinfo is not None and data.mode == OutboxMessage.Mode.FORWARD:
            subject = compose.forward_subject(pinfo.subject)
        elif pinfo is not None:
            subject = compose.reply_subject(pinfo.subject)
        else:
            subject = ""
    subject = subject.replace("\t", " ")
    _check(subject, "subject")
    if html_body:
        html_body = nh3.clean(html_body)
        if not text:
            text = html_to_text(html_body)
    if data.signature and (created_by or user) is not None:
        sig_key = f"signature:{getattr(created_by or user, 'pk', None)}:{mailbox.pk}"
        if sig_key not in cache:
            cache[sig_key] = _signature(created_by or user, mailbox)
        sig = cache[sig_key]
        if sig is not None:
            if sig.text:
                text = text.rstrip("\n") + "\n\n-- \n" + sig.text
            if html_body and (sig.html or sig.text):
                sig_html = nh3.clean(sig.html) if sig.html else html_lib.escape(sig.text).replace("\n", "<br>")
                html_body += f'<div class="mr-signature">-- <br>{sig_html}</div>'
    attachments = [*_decode_attachments(data.attachments), *extra_attachments]
    if pinfo is not None:
        if data.mode == OutboxMessage.Mode.FORWARD:
            who = ", ".join(compose.format_addr(a) for a in pinfo.from_)
            header = (f"\n\n---------- Forwarded message ----------\nFrom: {who}\nDate: {pinfo.date}\n"
                      f"Subject: {pinfo.subject}\nTo: {', '.join(compose.format_addr(a) for a in pinfo.to)}\n\n")
            text = text.rstrip("\n") + header + pinfo.text
            if html_body:
                html_body += "<br><br>" + html_lib.escape(header + pinfo.text).replace("\n", "<br>")
            if pinfo.raw:
                attachments.append(Attachment("forwarded.eml", "message/rfc822", pinfo.raw))
        elif pinfo.text:
            who = compose.format_addr(pinfo.from_[0]) if pinfo.from_ else "someone"
            intro = f"On {pinfo.date}, {who} wrote:" if pinfo.date else f"{who} wrote:"
            text = text.rstrip("\n") + f"\n\n{intro}\n{_quote(pinfo.text)}\n"
            if html_body:
                html_body += (f"<br><div>{html_lib.escape(intro)}</div><blockquote>"
                              f"{html_lib.escape(pinfo.text).replace(chr(10), '<br>')}</blockquote>")

    # Headers.
    thread_id = parent.thread_id if parent is not None else None
    message_id = make_message_id(thread_id=thread_id, domain=message_id_domain(mailbox))
    in_reply_to = ""
    references: tuple[str, ...] = ()
    if pinfo is not None and data.mode != OutboxMessage.Mode.FORWARD:
        in_reply_to = pinfo.message_id
        references = compose.trim_references([*pinfo.references, pinfo.message_id])
    root = references[0] if references else message_id
    t_index = compose.thread_index(when=now, parent=pinfo.thread_index if pinfo and in_reply_to else "",
                                   seed=hashlib.sha256(root.encode()).digest()[:16])

    # In a batch the caller's transaction covers the row; alone, a savepoint makes token + row atomic.
    with transaction.atomic() if cache.get("collect") is None else contextlib.nullcontext():
        # Relay: Reply-To reply+<token>@relay-domain, per mailbox option.
        token = reply_to_token
        rs_key = f"relay_settings:{mailbox.pk}"
        if rs_key not in cache:
            cache[rs_key] = _relay_settings(mailbox)
        rs = cache[rs_key]
        if token is None and relay_domain and (rs is None or rs.reply_to_relay) and origin != OutboxMessage.Origin.RELAY_FORWARD:
            from mailroom.outbound.relay import relay_owner_for, relay_token_create

            owner, forward = relay_owner_for(mailbox=mailbox, settings_row=rs, user=created_by or user,
                                             parent=parent, deal_id=data.deal, per_send=data.relay_to_owner)
            token = relay_token_create(kind=RelayToken.Kind.CLIENT, mailbox=mailbox, owner=owner,
                                       thread_id=thread_id, root_message_id=message_id, forward_to_owner=forward)
        reply_to: tuple[Addr, ...] = ()
        if token is not None and relay_domain:
            from mailroom.outbound.relay import relay_address

            reply_to = (Addr(relay_address(token.token), mailbox.display_name or ""),)
        draft = Draft(
            from_=Addr(mailbox.email.lower(), mailbox.display_name),
            to=tuple(to), cc=tuple(cc), reply_to=reply_to,
            subject=subject, message_id=message_id, date=now,
            text=text, html=html_body,
            in_reply_to=in_reply_to, references=references,
            thread_index=t_index, thread_topic=compose.strip_subject_prefixes(subject),
            auto_submitted=data.auto_submitted, extra_headers=tuple(extra_headers),
            attachments=tuple(attachments),
        )
        try:
            raw = compose.build_message(draft)
        except HeaderInjection as exc:  # a value from stored settings or headers: refused, never sent
            raise InvalidInput(f"cannot send: {exc}", field=exc.field) from exc
        due = data.send_at if data.send_at and data.send_at > now else now
        row = OutboxMessage(
            team_id=mailbox.team_id, mailbox=mailbox,
            created_by=(created_by or user) if getattr(created_by or user, "pk", None) else None,
            idempotency_key=key, request_hash=req_hash, mode=data.mode, origin=origin,
            reply_to_message=parent, thread_id=thread_id,
            message_id=message_id, subject=subject, mail_from=mailbox.email.lower(),
            recipients=envelope,
            to=[a.address for a in to], cc=[a.address for a in cc], bcc=[a.address for a in bcc],
            raw=raw, size=len(raw), send_at=data.send_at, next_attempt_at=due,
            append_required=not mailbox.provider_saves_sent and origin != OutboxMessage.Origin.RELAY_FORWARD,
            relay_token=token, relay_to_owner=bool(token and token.forward_to_owner),
            source_message=source_message,
        )
        collect = cache.get("collect")
        if collect is not None:  # outbox_create_batch inserts the rows in bulk
            collect.append(row)
            return row, True
        try:
            with transaction.atomic():
                row.save(force_insert=True)
        except IntegrityError:
            existing = OutboxMessage.objects.filter(team_id=mailbox.team_id, idempotency_key=key).first()
            if existing is None:
                raise
            return _same_or_conflict(existing, req_hash), False
        transaction.on_commit(wake_outbox)
    log.info("outbox.created", extra={"outbox_id": row.pk, "mailbox_id": mailbox.pk, "size": len(raw)})
    return row, True


def outbox_create_batch(*, user: Any, mailbox: Mailbox, items: Sequence[ComposeInput]) -> list[tuple[OutboxMessage, bool]]:
    """Create many outbox rows in one durable transaction (campaigns, imports, the benchmark):
    the same checks and bytes as :func:`outbox_create`, one commit (one fsync) for the batch."""
    keys = [d.idempotency_key for d in items if d.idempotency_key]
    taken = set(OutboxMessage.objects.filter(team_id=mailbox.team_id, idempotency_key__in=keys)
                .values_list("idempotency_key", flat=True))
    collected: list[OutboxMessage] = []
    cache: dict[str, Any] = {"new_keys": {k for k in keys if k not in taken}, "collect": collected}
    try:
        with transaction.atomic():
            results = [outbox_create(user=user, mailbox=mailbox, data=d, _cache=cache) for d in items]
            insert_rows(OutboxMessage, collected)
            pks: dict[str, int] = {}
            row_keys = [r.idempotency_key for r in collected]
            for i in range(0, len(row_keys), 900):
                pks.update(OutboxMessage.objects.filter(team_id=mailbox.team_id, idempotency_key__in=row_keys[i : i + 900])
                           .values_list("idempotency_key", "id"))
            for r in collected:
                r.pk = pks[r.idempotency_key]
                r._state.adding = False
                r._state.db = connection.alias
            transaction.on_commit(wake_outbox)
            return results
    except IntegrityError:  # a key taken meanwhile (or twice in the batch): the careful way, one by one
        with transaction.atomic():
            return [outbox_create(user=user, mailbox=mailbox, data=d) for d in items]


def _same_or_conflict(existing: OutboxMessage, req_hash: str) -> OutboxMessage:
    if existing.request_hash != req_hash:
        raise Conflict("idempotency_key: already used for a different message", field="idempotency_key")
    return existing


# --- sending ---------------------------------------------------------------------------------------
_HOST = socket.gethostname()


def new_worker_id() -> str:
    return f"{_HOST}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _owner_dead(owner: str) -> bool:
    host, _, rest = owner.partition(":")
    pid_s = rest.partition(":")[0]
    if host != _HOST or not pid_s.isdigit():
        return False
    pid = int(pid_s)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@dataclass(slots=True)
class SendReport:
    claimed: int = 0
    sent: int = 0
    retrying: int = 0
    failed: int = 0
    connections: int = 0


@dataclass(frozen=True, slots=True)
class _Job:
    """What a sender thread and the recorder need of a claimed row (no ORM instance per row)."""

    pk: int
    team_id: int
    mailbox_id: int
    mail_from: str
    recipients: tuple[str, ...]
    raw: bytes
    message_id: str
    subject: str
    to: tuple[str, ...]
    bcc: tuple[str, ...]
    origin: str
    attempts: int
    max_attempts: int


_JOB_FIELDS = ("id", "team_id", "mailbox_id", "mail_from", "recipients", "raw", "message_id", "subject", "to", "bcc",
               "origin", "attempts", "max_attempts")


def outbox_claim_due(*, worker_id: str, limit: int = 200, now: datetime | None = None) -> list[int]:
    """Lease up to ``limit`` due rows (queued/retrying whose time has come, or sending whose lease
    expired or whose local worker died) to ``worker_id``. Returns their ids, committed."""
    now = now or timezone.now()
    stuck_owners = [
        o for o in OutboxMessage.objects.filter(state=OutboxMessage.State.SENDING, lease_expires_at__gt=now)
        .values_list("lease_owner", flat=True).distinct() if o != worker_id and _owner_dead(o)
    ]
    due = (
        Q(state__in=[OutboxMessage.State.QUEUED, OutboxMessage.State.RETRYING], next_attempt_at__lte=now)
        | Q(state=OutboxMessage.State.SENDING, lease_expires_at__lte=now)
        | Q(state=OutboxMessage.State.SENDING, lease_owner__in=stuck_owners)
    )
    with transaction.atomic():
        ids = list(OutboxMessage.objects.filter(due).order_by("next_attempt_at", "id").values_list("id", flat=True)[:limit])
        if not ids:
            return []
        OutboxMessage.objects.filter(due, id__in=ids).update(
            state=OutboxMessage.State.SENDING, lease_owner=worker_id,
            lease_expires_at=now + timedelta(seconds=lease_seconds()), attempts=F("attempts") + 1,
        )
        return list(OutboxMessage.objects.filter(id__in=ids, lease_owner=worker_id,
                                                 state=OutboxMessage.State.SENDING).values_list("id", flat=True))


def _load_jobs(ids: Sequence[int]) -> list[_Job]:
    jobs: list[_Job] = []
    for i in range(0, len(ids), 900):  # SQLite's bound-parameter limit
        for v in OutboxMessage.objects.filter(id__in=ids[i : i + 900]).order_by("id").values_list(*_JOB_FIELDS):
            jobs.append(_Job(v[0], v[1], v[2], v[3], tuple(v[4]), bytes(v[5]), v[6], v[7], tuple(v[8]), tuple(v[9]),
                             v[10], v[11], v[12]))
    return jobs


_DONE = object()


def _sender(smtp_settings: SmtpSettings, jobs: Sequence[_Job], out: queue.SimpleQueue[Any]) -> None:
    """One SMTP connection, reused for ``jobs``: results go to the recorder as they come. No database."""
    sub = Submitter(smtp_settings)
    try:
        for job in jobs:
            out.put((job, sub.send(job.mail_from, job.recipients, job.raw)))
    finally:
        sub.close()
        out.put((_DONE, sub.connections_opened))


def outbox_send_due(
    *, limit: int = 200, parallel: int | None = None, worker_id: str | None = None, now: datetime | None = None,
    chunk_size: int | None = None,
) -> SendReport:
    """Claim and send due messages; returns what happened. Safe to run concurrently and repeatedly.

    Pipelined: one sender thread per SMTP connection (a mailbox's messages share its connection;
    a busy mailbox gets several when ``parallel`` allows) puts results on a queue, while this thread
    records them ``chunk_size`` at a time, one durable commit per chunk."""
    worker_id = worker_id or new_worker_id()
    parallel = parallel or connections()
    chunk_size = chunk_size or record_chunk()
    ids = outbox_claim_due(worker_id=worker_id, limit=limit, now=now)
    report = SendReport(claimed=len(ids))
    if not ids:
        return report
    jobs = _load_jobs(ids)
    groups: dict[int, list[_Job]] = defaultdict(list)
    for job in jobs:
        groups[job.mailbox_id].append(job)
    mailboxes = Mailbox.objects.in_bulk(list(groups))
    results: queue.SimpleQueue[Any] = queue.SimpleQueue()
    pending: list[tuple[_Job, SendResult]] = []
    lanes: list[tuple[SmtpSettings, list[_Job]]] = []
    for mailbox_id, group in groups.items():
        try:
            smtp = settings_for_mailbox(mailboxes[mailbox_id], timeout=smtp_timeout_seconds())
        except Exception as exc:  # OAuth2 refresh failed, secret unreadable: nothing sent, try later
            log.warning("outbox.settings_failed", extra={"mailbox_id": mailbox_id, "error": str(exc)})
            pending.extend((job, SendResult("retry", None, f"mailbox settings: {exc}", "auth")) for job in group)
            continue
        lanes.append((smtp, group))
    # Spare connections go to the biggest groups (at most `parallel` connections in all).
    per_lane = [1] * len(lanes)
    spare = max(0, parallel - len(lanes))
    while spare > 0 and lanes:
        k = max(range(len(lanes)), key=lambda j: len(lanes[j][1]) / per_lane[j])
        if len(lanes[k][1]) / per_lane[k] < 2 * chunk_size:
            break
        per_lane[k] += 1
        spare -= 1
    threads = [
        threading.Thread(target=_sender, args=(smtp, group[c::n], results), name="outbox-smtp", daemon=True)
        for (smtp, group), n in zip(lanes, per_lane, strict=True) for c in range(n)
    ]
    running = 0
    for t in threads[:max(1, parallel)]:
        t.start()
        running += 1
    waiting = threads[running:]
    while running:
        item, value = results.get()
        if item is _DONE:
            running -= 1
            report.connections += value
            if waiting:
                waiting.pop(0).start()
                running += 1
        else:
            pending.append((item, value))
        if len(pending) >= chunk_size or (not running and pending):
            _record_results(pending, worker_id, report)
            pending = []
    if pending:
        _record_results(pending, worker_id, report)
    return report


def _exec_many(sql: str, params: Sequence[Sequence[Any]]) -> None:
    if params:
        with connection.cursor() as cur:
            cur.executemany(sql, params)


_T = OutboxMessage._meta.db_table
_RESULTS_FIELD = OutboxMessage._meta.get_field("recipient_results")


def _record_results(done: Sequence[tuple[_Job, SendResult]], worker_id: str, report: SendReport) -> None:
    """Record one chunk of results in one transaction: state (one UPDATE for the plainly accepted,
    executemany for the rest), the sent copies in the raw store (one ``store_batch`` per mailbox),
    and the events. Only the lease holder records (a row re-leased elsewhere after a stall is not ours)."""
    now = timezone.now()
    q = connection.ops.quote_name
    ts = connection.ops.adapt_datetimefield_value
    events: list[tuple[int, str, dict[str, Any]]] = []
    sent_by_mailbox: dict[int, list[_Job]] = defaultdict(list)
    plain_sent: list[int] = []
    other: list[list[Any]] = []
    sending = OutboxMessage.State.SENDING
    for job, res in done:
        payload = {"outbox_id": job.pk, "message_id": job.message_id, "mailbox_id": job.mailbox_id,
                   "subject": job.subject, "to": list(job.to), "smtp_code": res.code, "smtp_text": res.text[:1000]}
        refused = _RESULTS_FIELD.get_db_prep_save({a: {"code": c, "text": t} for a, (c, t) in res.refused.items()},
                                                  connection)
        if res.outcome == "sent":
            report.sent += 1
            if job.origin != OutboxMessage.Origin.RELAY_FORWARD:  # a forward to a personal address stays private
                sent_by_mailbox[job.mailbox_id].append(job)
            events.append((job.team_id, Event.Kind.MESSAGE_SENT, payload))
            if not res.refused and res.code == 250 and res.text == "accepted":
                plain_sent.append(job.pk)
                continue
            state, sent_at, failed_at, next_at = OutboxMessage.State.SENT, ts(now), None, None
        elif res.outcome == "retry" and job.attempts < job.max_attempts:
            report.retrying += 1
            state, sent_at, failed_at = OutboxMessage.State.RETRYING, None, None
            next_at = ts(now + timedelta(seconds=backoff_seconds(job.attempts, base=retry_base_seconds())))
        else:
            report.failed += 1
            events.append((job.team_id, Event.Kind.MESSAGE_FAILED, payload))
            state, sent_at, failed_at, next_at = OutboxMessage.State.FAILED, None, ts(now), None
        other.append([state, sent_at, failed_at, next_at, res.code, res.text[:4000], res.kind, refused, ts(now),
                      job.pk, worker_id, sending])
    with transaction.atomic():
        for i in range(0, len(plain_sent), 500):
            OutboxMessage.objects.filter(pk__in=plain_sent[i : i + 500], lease_owner=worker_id, state=sending).update(
                state=OutboxMessage.State.SENT, sent_at=now, last_smtp_code=250, last_smtp_text="accepted",
                last_error_kind="", recipient_results={}, lease_owner="", lease_expires_at=None, updated_at=now)
        _exec_many(
            f"UPDATE {q(_T)} SET state = %s, sent_at = COALESCE(%s, sent_at), "  # noqa: S608 - quoted identifiers
            "failed_at = COALESCE(%s, failed_at), next_attempt_at = COALESCE(%s, next_attempt_at), "
            "last_smtp_code = %s, last_smtp_text = %s, last_error_kind = %s, recipient_results = %s, "
            "lease_owner = '', lease_expires_at = NULL, updated_at = %s "
            "WHERE id = %s AND lease_owner = %s AND state = %s", other)
        stored: list[tuple[int, int]] = []
        for group in sent_by_mailbox.values():
            mb = Mailbox(pk=group[0].mailbox_id, team_id=group[0].team_id)  # store_batch needs the key only
            res_store = store_batch(
                team_id=group[0].team_id, kind="outbox", mailbox=mb, direction=Message.Direction.OUTGOING,
                items=[IncomingRaw(raw=compose.sent_copy_bytes(j.raw, j.bcc), key=f"outbox:{j.pk}", internal_date=now)
                       for j in group],
                live=True,  # the client's answer will reference it: threaded at once
            )
            stored.extend((msg_pk, j.pk) for j, msg_pk in zip(group, res_store.message_pks, strict=True))
        _exec_many(f"UPDATE {q(_T)} SET stored_message_id = %s WHERE id = %s", stored)  # noqa: S608
        events_record(events)
    if sent_by_mailbox:
        transaction.on_commit(wake_outbox)


def outbox_append_due(*, limit: int = 200) -> int:
    """APPEND sent messages to their mailbox's Sent folder (guarded). Returns how many were filed."""
    rows = list(
        OutboxMessage.objects.filter(state=OutboxMessage.State.SENT, append_required=True,
                                     appended_to_sent_at__isnull=True, append_attempts__lt=10)
        .select_related("mailbox").order_by("id")[:limit]
    )
    groups: dict[int, list[OutboxMessage]] = defaultdict(list)
    for row in rows:
        groups[row.mailbox_id].append(row)
    done = 0
    for group in groups.values():
        mb = group[0].mailbox
        if mb.provider_saves_sent:
            OutboxMessage.objects.filter(id__in=[r.pk for r in group]).update(append_required=False)
            continue
        folder = Folder.objects.filter(mailbox=mb, role=Folder.Role.SENT).values_list("raw_name", flat=True).first()
        try:
            imap = imap_settings_for_mailbox(mb)
        except Exception as exc:  # OAuth2 refresh failed: count an attempt, the others go on
            OutboxMessage.objects.filter(id__in=[r.pk for r in group]).update(
                append_attempts=F("append_attempts") + 1, append_error=f"mailbox settings: {exc}"[:2000])
            continue
        results = append_guarded(
            imap, folder,
            [AppendItem(r.pk, r.message_id, r.sent_copy(), r.sent_at) for r in group],
        )
        now = timezone.now()
        with transaction.atomic():
            for res in results:
                if res.ok:
                    OutboxMessage.objects.filter(pk=res.key).update(appended_to_sent_at=now, append_error="")
                    done += 1
                else:
                    OutboxMessage.objects.filter(pk=res.key).update(
                        append_attempts=F("append_attempts") + 1, append_error=res.error[:2000])
    return done


def outbox_retry(*, outbox: OutboxMessage) -> OutboxMessage:
    with transaction.atomic():
        n = OutboxMessage.objects.filter(
            pk=outbox.pk, state__in=[OutboxMessage.State.FAILED, OutboxMessage.State.RETRYING]
        ).update(state=OutboxMessage.State.QUEUED, next_attempt_at=timezone.now(), attempts=0, failed_at=None)
        if not n:
            raise Conflict(f"outbox message {outbox.pk} is {outbox.state}: only failed or retrying messages can be retried")
        transaction.on_commit(wake_outbox)
    outbox.refresh_from_db()
    return outbox


def outbox_cancel(*, outbox: OutboxMessage) -> OutboxMessage:
    with transaction.atomic():
        n = OutboxMessage.objects.filter(
            pk=outbox.pk, state__in=[OutboxMessage.State.QUEUED, OutboxMessage.State.RETRYING,
                                     OutboxMessage.State.FAILED]
        ).update(state=OutboxMessage.State.CANCELLED, cancelled_at=timezone.now())
        if not n:
            raise Conflict(f"outbox message {outbox.pk} is {outbox.state}: it can no longer be cancelled")
    outbox.refresh_from_db()
    return outbox


def addresses_of(values: Sequence[str]) -> list[str]:
    return [a.lower() for _, a in getaddresses(list(values)) if a]


def personal_addresses(user: Any) -> set[str]:
    addrs = {a.lower() for a in PersonalAddress.objects.filter(user=user).values_list("address", flat=True)}
    if getattr(user, "email", ""):
        addrs.add(user.email.lower())
    return addrs
