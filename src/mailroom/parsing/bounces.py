"""Bounces (RFC 3464 DSNs and the free-text formats of the common MTAs) and ARF complaints.

Detection: a ``message/delivery-status`` part (RFC 3464) is read field by field; otherwise a message
from a mailer daemon / with a bounce-like subject / with ``X-Failed-Recipients`` is read as text:
recipients are taken from the lines MTAs put them on (Exim, Postfix, qmail, Sendmail, Exchange,
Gmail, Yahoo, Yandex, Mail.ru, ...) before the copy of the original message. Each recipient gets a
status code, an action, a reason (sisimai's vocabulary: userunknown, hostunknown, mailboxfull,
expired, ...) and hard/soft: hard when retrying cannot help (unknown user/host, moved, a domain that
does not accept mail), soft otherwise. As in sisimai, "unknown user" counts as userunknown only when
it answered RCPT TO or came with an addressing status (X.1.1); the same words answering DATA, with a
mailbox/policy status (X.2.x, X.7.x) or from an SMTP server at an unknown stage are a recipient-side
filter (``filtered``, soft), e.g. Japanese carriers' "550 : User unknown".
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from mailroom.parsing.headers import msgid_list, normalize_address
from mailroom.parsing.records import pickled_by_fields


class _Headers(Protocol):
    def get(self, name: str, default: str = "") -> str: ...

    def __contains__(self, name: object) -> bool: ...


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class BounceRecipient:
    address: str
    status: str  # enhanced status code "5.1.1" ("" if unknown)
    action: str  # failed, delayed, delivered, relayed, expanded
    hard: bool
    reason: str  # userunknown, hostunknown, mailboxfull, expired, blocked, ...
    reply_code: str = ""  # SMTP reply code "550"
    diagnostic: str = ""


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class BounceInfo:
    is_bounce: bool = False
    kind: str = ""  # "dsn" (RFC 3464), "text" (MTA free text), "arf" (complaint) or ""
    recipients: tuple[BounceRecipient, ...] = ()
    original_message_id: str = ""
    is_complaint: bool = False
    feedback_type: str = ""  # ARF Feedback-Type (abuse, fraud, opt-out, ...)
    reporting_mta: str = ""


@dataclass(frozen=True, slots=True)
class BounceInput:
    headers: _Headers | Mapping[str, str]
    subject: str
    from_address: str
    content_type: str  # of the top-level entity
    report_type: str  # multipart/report's report-type parameter
    text: str  # the shown text body (head)
    delivery_status: tuple[str, ...] = ()  # decoded message/delivery-status parts
    feedback_report: tuple[str, ...] = ()  # decoded message/feedback-report parts
    original_headers: tuple[str, ...] = ()  # text/rfc822-headers parts
    original_message_ids: tuple[str, ...] = field(default=())  # Message-IDs of attached message/rfc822
    original_recipients: tuple[str, ...] = ()  # To: addresses of the attached original message
    original_from: str = ""  # From: address of the attached message
    original_text: str = ""  # text of the attached message (a bounce may wrap another bounce)


# --- reasons ----------------------------------------------------------------------------------------

_HARD_REASONS = frozenset({"userunknown", "hostunknown", "hasmoved"})

# Ordered: the first reason whose phrase matches the diagnostic wins.
_REASON_PHRASES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(rx, re.I))
    for name, rx in (
        ("hasmoved", r"has been moved|\bhas moved\b|address .{0,40}changed|5\.1\.6\b"),
        (
            "suspend",
            r"mailbox (?:is )?(?:disabled|inactive|suspended|frozen)|account (?:is |has been )?(?:disabled|suspended|inactive|deactivated|expired|locked)|"
            r"recipient (?:account|address) (?:is )?(?:disabled|suspended|inactive)|user (?:account )?(?:is )?(?:disabled|suspended|inactive)|"
            r"mailbox unavailable.{0,30}(?:disabled|inactive)|is inactive|temporarily (?:disabled|deactivated)|account.{0,20}blocked|"
            r"mailbox has been (?:blocked|disabled)|user is terminated|this account has been disabled|temporar\w* locked|disabled recipient|"
            r"почтовый ящик (?:заблокирован|отключен)|ящик.{0,20}заблокирован",
        ),
        (
            "mailboxfull",
            r"mailbox (?:is )?full|mailbox.{0,40}(?:quota|exceed)|quota.{0,30}(?:exceed|full)|over ?quota|exceed\w* (?:the )?(?:storage|quota)|"
            r"insufficient (?:disk )?(?:space|storage)|mailbox size limit|out of (?:disk )?space|mail ?box (?:has )?exceeded|"
            r"user has exceeded|full mailbox|not enough (?:storage|space)|disk quota|mailfolder is full|is over (?:its |their )?(?:storage|quota)|"
            r"\b[45]\.2\.2\b|переполнен|превышен.{0,20}(?:квот|размер)",
        ),
        (
            "mesgtoobig",
            r"message (?:is )?too (?:big|large)|message size exceeds|exceeds? (?:the )?(?:maximum )?(?:message )?size|size limit|\b5\.3\.4\b|\b552 .{0,30}size",
        ),
        (
            "networkerror",
            r"name service error|host not found, try again|temporary (?:dns|lookup) failure|dns (?:timeout|temporary)",
        ),
        (
            "blocked",
            r"my name was rejected|blacklisted|listed (?:in|at|on) .{0,30}(?:rbl|dnsbl|spamhaus|spamcop|blacklist|blocklist)",
        ),
        ("authfailure", r"authentication checks? failed|dmarc (?:policy|check)|spf (?:check|fail)"),
        ("requireptr", r"reverse dns (?:validation|lookup)|ptr record|rdns"),
        ("notaccept", r"no smtp service|does not accept (?:e-?)?mail|null mx"),
        (
            "hostunknown",
            r"host (?:or domain name )?(?:not found|unknown)|unknown host|domain (?:not found|does not exist|name not found)|no such domain|"
            r"name or service not known|unrouteable (?:mail )?domain|unroutable|no mx|mx record|dns (?:lookup|error).{0,30}(?:fail|not)|"
            r"domain .{0,40}(?:doesn'?t|does not) exist|invalid domain|(?:recipient )?domain.{0,20}not (?:exist|found)|"
            r"unknown domain|bad destination (?:host|system)|\b5\.1\.2\b|host name lookup failure|nxdomain|all relevant mx records point to non-existent hosts|"
            r"domain is not reachable|unrouteable address|(?<![@\w.-])[a-z0-9-]+(?:\.[a-z0-9-]+)+ does not exist|"
            r"домен не существует|домен не найден",
        ),
        (
            "notaccept",
            r"does not accept (?:e-?)?mail|not accepting (?:e-?)?mail|not accepting (?:network )?messages|null mx|\b5\.1\.10\b|\b556\b|no longer accepts? mail",
        ),
        (
            "userunknown",
            r"user ?unknown|unknown user|unknown (?:local[- ]?part|recipient|address|mailbox|account)|no such (?:user|mailbox|recipient|address|account|person)|"
            r"(?:user|mailbox|recipient|address|account)(?: name)? (?:does not|doesn'?t|did not) exist|(?:user|mailbox|recipient|address|account) not (?:found|exist)|"
            r"invalid (?:recipient|mailbox|user|address)|recipient (?:address )?rejected: (?:user unknown|access denied)|not a valid (?:mailbox|recipient|user)|"
            r"recipient name is not recognized|invalid final delivery userid|not listed in (?:domino directory|public name & address book)|"
            r"and other recipients in the same domain|"
            r"unknown or illegal alias|mailbox (?:is )?unavailable|mailbox not available|no mailbox|not our customer|"
            r"addressee unknown|undeliverable address|bad recipient|user not listed|recipient not found|unrecognized user|"
            r"invalid address|address (?:is )?(?:invalid|unknown)|no such local user|user doesn'?t have .{0,20}account|"
            r"mailbox .{0,40}(?:does not exist|not found|unknown)|doesn'?t have an? .{0,30} account|"
            r"the email account that you tried to reach does not exist|is not a valid mailbox|deactivated mailbox|"
            r"address couldn'?t be found|address could not be found|"
            r"recipient address rejected: (?:user unknown|access denied)|no valid recipients|unknown address|"
            r">: recipient address rejected\.?\s*$|"
            r"bad destination mailbox address|\b5\.1\.1\b|\b550[ -]5\.1\.1|\b5\.1\.0\b|\b4\.1\.1\b|#5\.1\.1|"
            r"нет такого пользователя|пользователь не найден|адрес не существует|неизвестный адрес|такого ящика нет",
        ),
        (
            "expired",
            r"retry (?:time|timeout) (?:not reached|exceeded)|delivery (?:time )?expired|message expired|expired|too long in (?:the )?queue|"
            r"could not be delivered (?:with|within|for) .{0,40}(?:days|hours)|undeliverable for|unable to deliver .{0,20}for|"
            r"giving up|gave up|time ?out|timed out|delivery temporarily suspended|\b4\.4\.7\b|delivery delayed|has been delayed|"
            r"will (?:continue|keep) trying|not yet been delivered|deferred|remote host did not respond|connection refused",
        ),
        (
            "norelaying",
            r"relay(?:ing)? (?:access )?(?:denied|not permitted|not allowed|prohibited)|not permitted to relay|we do not relay|unable to relay|\b5\.7\.1 .{0,20}relay",
        ),
        (
            "securityerror",
            r"authentication required|tls required|must (?:issue|use) (?:a )?starttls|encryption required|\b5\.7\.0\b|\b5\.7\.5\b|\b5\.7\.8\b",
        ),
        ("virusdetected", r"virus|malware|infected"),
        (
            "spamdetected",
            r"\bspam\b|junk mail|spam content|content rejected|message (?:is |was )?(?:considered|classified|identified) as spam|\b5\.7\.1 .{0,40}spam",
        ),
        (
            "authfailure",
            r"spf|dkim|dmarc|sender (?:policy|authentication)|authentication (?:fail|check)|not authorized to send",
        ),
        (
            "requireptr",
            r"reverse (?:dns|lookup)|ptr record|rdns|no ptr|client host .{0,40}(?:rejected|blocked).{0,40}reverse|cannot find your hostname",
        ),
        (
            "blocked",
            r"blacklist|blocklist|block list|black list|listed (?:in|at|on)|\bdnsbl\b|\brbl\b|spamhaus|spamcop|barracuda|ip (?:address )?.{0,30}(?:blocked|rejected|banned)|access denied|connection (?:refused|rejected)|poor reputation|bad reputation|blocked|banned",
        ),
        (
            "toomanyconn",
            r"too many (?:connections|recipients|messages)|connection rate|rate limit|throttl|try again later|exceeded .{0,20}limit|\b4\.7\.0\b|\b4\.2\.1\b",
        ),
        (
            "filtered",
            r"filter|rejected by (?:the )?recipient|refused by recipient|not authorized|prohibited|policy|denied",
        ),
        (
            "rejected",
            r"rejected|refused|not accepted|sender .{0,30}(?:rejected|denied|blocked)|domain of sender address|sender address rejected",
        ),
        (
            "networkerror",
            r"network|routing loop|mail loop|loop detected|too many hops|hop count|connection (?:lost|dropped|reset)|no route",
        ),
        (
            "systemerror",
            r"system error|internal error|server error|local error|temporary failure|temporary error|service unavailable|resources|i/o error|configuration error|\b4\.3\.\d\b|\b5\.3\.\d\b",
        ),
    )
)

# Phrases that decide whatever the status code says (soft reasons MTAs report with 5.1.x codes).
_SENDER_REJECTED = re.compile(
    r"sender (?:address )?rejected|unroutable sender|sender (?:address )?(?:is )?(?:invalid|not allowed|denied)|domain of sender address",
    re.I,
)
_OVERRIDES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(rx, re.I))
    for name, rx in (
        ("speeding", r"too many recipients this hour|sent too many|rate limit(?:ed)?|too many messages"),
        ("hostunknown", r"the account or domain may not exist"),
        ("networkerror", r"malformed or unexpected name server reply"),
        ("filtered", r"refused due to recipient preferences|recipient preferences|\b550:? : user unknown"),
    )
)

_USERUNKNOWN = dict(_REASON_PHRASES)["userunknown"]

_STATUS_REASON = {
    "5.1.1": "userunknown",
    "5.1.0": "userunknown",
    "4.1.1": "userunknown",
    "5.1.2": "hostunknown",
    "5.1.6": "hasmoved",
    "5.1.10": "notaccept",
    "5.3.2": "notaccept",
    "5.2.2": "mailboxfull",
    "4.2.2": "mailboxfull",
    "5.2.1": "filtered",
    "5.2.0": "filtered",
    "5.3.4": "mesgtoobig",
    "5.2.3": "mesgtoobig",
    "4.4.7": "expired",
    "5.4.7": "expired",
    "5.7.1": "rejected",
    "5.4.6": "networkerror",
    "5.4.4": "hostunknown",
    "4.4.1": "networkerror",
    "5.7.26": "authfailure",
    "5.7.25": "requireptr",
    "5.7.23": "authfailure",
}


def classify_reason(diagnostic: str, status: str = "", action: str = "") -> str:
    """sisimai-style reason for one failed recipient."""
    if action == "delivered" or status.startswith("2."):
        return "delivered"
    text = diagnostic or ""
    if status in ("5.1.7", "5.1.8") or _SENDER_REJECTED.search(text):
        return "rejected"
    for name, rx in _OVERRIDES:
        if rx.search(text):
            return name
    by_status = _STATUS_REASON.get(status, "")
    if by_status == "filtered" and _USERUNKNOWN.search(text):
        return "userunknown"  # adjust_reason() decides from the SMTP stage
    if by_status in ("userunknown", "hostunknown", "hasmoved", "mailboxfull", "filtered"):
        # Explicit text can still say otherwise (e.g. 5.1.1 "mailbox disabled" is a suspension).
        for name, rx in _REASON_PHRASES[:3]:
            if rx.search(text):
                return name
        return by_status
    for name, rx in _REASON_PHRASES:
        if rx.search(text):
            return name
    if by_status:
        return by_status
    if action == "delayed" or status.startswith("4."):
        return "expired" if action == "delayed" else "undefined"
    return "undefined"


def is_hard(reason: str, status: str, reply_code: str = "") -> bool:
    if reason in _HARD_REASONS:
        return True
    if reason == "notaccept":
        return status.startswith("5") or reply_code.startswith("5")
    return False


_STAGE_PHRASE = re.compile(
    r"(?:in reply to|after|SMTP command:?|-+SMTP command|did not like our|SMTP:)\s*(?:the\s+)?(?:end of\s+)?"
    r"(DATA|MAIL FROM|MAIL|RCPT TO|RCPT|HELO|EHLO|connect)\b|\[(RCPT)_TO\]|for (RCPT) TO response|does not like (recipient)\b",
    re.I,
)
_TRANSCRIPT = re.compile(
    r"(?:^|\s)>>> (DATA|MAIL FROM|MAIL|RCPT TO|RCPT|HELO|EHLO)\b(?:(?!>>>).){0,300}?<<< [45]\d\d", re.I | re.S
)


def smtp_stage(text: str) -> str:
    """The SMTP command a rejection answered: "DATA", "MAIL", "RCPT", "HELO" or ""."""
    m = _TRANSCRIPT.search(text) or _STAGE_PHRASE.search(text)
    if m is None:
        return ""
    cmd = next((g for g in m.groups() if g), "").upper()
    if cmd == "RECIPIENT":
        cmd = "RCPT"
    return (
        "MAIL"
        if cmd.startswith("MAIL")
        else "RCPT"
        if cmd.startswith("RCPT")
        else "HELO"
        if cmd in ("HELO", "EHLO")
        else cmd
    )


_EXPLICIT_UNKNOWN = re.compile(r"\b5\.1\.1\b|doesn'?t have an? \S+ account|mail\.local: unknown user", re.I)


def adjust_reason(reason: str, status: str, stage: str, text: str = "", *, dsn: bool = False) -> str:
    """Where a rejection happened changes what it means (sisimai's semantics): anything refused at
    MAIL FROM is about the sender, not the recipient; an "unknown user" answer to DATA, or with a
    X.2.x status outside RCPT TO, is a recipient-side filter (e.g. Japanese mobile carriers)."""
    if stage == "MAIL" and reason in (
        "userunknown",
        "hostunknown",
        "hasmoved",
        "undefined",
        "filtered",
        "notaccept",
    ):
        return "rejected"
    if reason == "userunknown":
        if stage == "DATA" and not _EXPLICIT_UNKNOWN.search(text):
            return "filtered"
        if status[2:3] not in ("", "0", "1", "5") and stage != "RCPT":
            # The status says it was not about the address (X.2 mailbox, X.7 policy, ...).
            return "filtered"
        if (
            not stage
            and (status == "" or (status[2:] == "0.0" and not dsn))
            and _FAIL_REPLY_CODE.search(text)
            and not _EXPLICIT_UNKNOWN.search(text)
        ):
            # An SMTP server said "unknown user" but not to RCPT TO: sisimai calls that filtered.
            return "filtered"
    if reason == "hostunknown" and status.startswith("4"):
        return "networkerror"
    return reason


# --- RFC 3464 ------------------------------------------------------------------------------------

_FIELD = re.compile(r"^([A-Za-z][A-Za-z0-9-]*)\s*:\s*(.*)$")
_STATUS_CODE = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_REPLY_CODE = re.compile(r"(?<![\d.])([245]\d\d)(?:[ -]|$)")
_FAIL_REPLY_CODE = re.compile(r"(?<![\d.])([45]\d\d)(?:[ ,-]|$)")
# The remote server's own status inside a relaying MTA's diagnostic: "... 550-'5.7.1 <x>... Access denied'"
_INNER_STATUS = re.compile(r"(?<=[45]\d\d-')([245])\.(\d{1,3})\.(\d{1,3})\b")


def _dsn_groups(text: str) -> list[dict[str, str]]:
    groups: list[dict[str, str]] = []
    cur: dict[str, str] = {}
    last = ""
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line.strip():
            if cur:
                groups.append(cur)
                cur = {}
            last = ""
            continue
        if line[0] in " \t" and last:
            cur[last] += " " + line.strip()
            continue
        m = _FIELD.match(line)
        if m:
            last = m.group(1).lower()
            if last == "final-recipient" and last in cur:
                # No blank line between two recipients' groups.
                groups.append(cur)
                cur = {}
            if last not in cur:
                cur[last] = m.group(2).strip()
    if cur:
        groups.append(cur)
    return groups


def _strip_type(value: str) -> str:
    """``rfc822; user@example.com`` -> ``user@example.com``."""
    if ";" in value:
        value = value.split(";", 1)[1]
    return value.strip()


def _parse_dsn(parts: tuple[str, ...]) -> tuple[list[BounceRecipient], str]:
    recipients: list[BounceRecipient] = []
    reporting = ""
    for text in parts:
        groups = _dsn_groups(text)
        for g in groups:
            if "reporting-mta" in g and not reporting:
                reporting = _strip_type(g["reporting-mta"])
            addr_raw = g.get("final-recipient") or g.get("original-recipient") or ""
            if not addr_raw:
                continue
            addr = normalize_address(_strip_type(addr_raw))
            if not addr:
                m = re.search(r"[^\s<>;:\"']+@[^\s<>;:\"']+", addr_raw)
                addr = normalize_address(m.group(0)) if m else ""
            if not addr:
                continue
            action = g.get("action", "").strip().lower().split()[0] if g.get("action", "").strip() else ""
            diag = _strip_type(g.get("diagnostic-code", "")) if "diagnostic-code" in g else ""
            status_m = _STATUS_CODE.search(g.get("status", ""))
            status = status_m.group(0) if status_m else ""
            dsm = _INNER_STATUS.search(diag) or _STATUS_CODE.search(diag)
            if dsm and (not status or status[0] == dsm.group(1)):
                status = dsm.group(0)
            rc = _REPLY_CODE.search(diag)
            reply_code = rc.group(1) if rc else ""
            if not action:
                action = "failed" if status.startswith("5") else "delayed" if status.startswith("4") else ""
            reason = classify_reason(diag, status, action)
            dtype = g.get("diagnostic-code", "").split(";", 1)[0].strip().lower()
            if dtype == "x-unix" and reason not in ("mailboxfull", "delivered", "expired"):
                reason = "mailererror"  # the local delivery program failed (procmail, maildrop, ...)
            recipients.append(
                BounceRecipient(
                    address=addr,
                    status=status,
                    action=action,
                    hard=is_hard(reason, status, reply_code),
                    reason=reason,
                    reply_code=reply_code,
                    diagnostic=" ".join(diag.split())[:500],
                )
            )
    return recipients, reporting


# --- free-text bounces --------------------------------------------------------------------------------

_DAEMON = re.compile(
    r"^(?:mailer-daemon|mailer_daemon|maildaemon|postmaster|mail-daemon|mdaemon|double-bounce|"
    r"bounce[s]?|post_master|mail\.delivery\.system|mailerdaemon|root|noreply-dmarc|nobody|mail-delivery-system)@",
    re.I,
)
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|undelivered|delivery (?:status notification|failure|failed|has failed|problem|report|notification)|"
    r"mail delivery (?:failed|failure|system|subsystem|problem)|returned mail|failure notice|delivery failure|"
    r"non[- ]?deliver|nondeliver|could not be delivered|cannot be delivered|can'?t be delivered|was not delivered|"
    r"message not delivered|mail (?:system )?error|returned to sender|delivery notification|warning: could not send|"
    r"rejected:|message rejected|mail could not be delivered|bounced|delayed mail|delivery delayed|"
    r"недоставлен|не доставлен|не удалось доставить|ошибка доставки|возврат|уведомление о доставке|"
    r"配信できません|配送できません|送信できませんでした|"
    r"unzustellbar|nicht zustellbar|non remis|non distribuable|error al entregar|не може бути доставлено",
    re.I,
)
_FROM_NAME_DAEMON = re.compile(
    r"mail delivery|mailer-daemon|postmaster|mail administrator|microsoft outlook|почтовый робот", re.I
)
_ORIGINAL_MARKER = re.compile(
    r"^\s*(?:-+\s*)?(?:below this line is a copy of the message|this is a copy of the (?:message|headers)|"
    r"original message (?:follows|headers)|the original message (?:was|is)(?! received)|"
    r"-+\s*original message\s*-+|-+\s*(?:the )?(?:original|returned|unsent) message|"
    r"unsent message below|returned message|message headers follow|original message header|"
    r"----- ?original message ?-----|"
    r"исходное сообщение|оригинальное сообщение|заголовки исходного сообщения)",
    re.I | re.M,
)
_ADDR = re.compile(
    r"(?<![\w.+-])(?:mailto:)?<?([A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)>?"
)
_ADDR_LINE = re.compile(
    r"^\s*(?:>>>\s*RCPT TO:?\s*|Sent <<< RCPT TO:\s*|RCPT TO:?\s*|Could not be delivered to:\s*|Recipient(?: address)?:\s*|To:\s*|Original-Recipient:\s*(?:rfc822;)?\s*|Final-Recipient:\s*(?:rfc822;)?\s*|"
    r"[45]\d\d[ -](?:[45]\.\d{1,3}\.\d{1,3}\s+)?(?=<)|Failed recipient:\s*|Адрес получателя:\s*|Получатель:\s*|Адрес:\s*|address:\s*)?"
    r"[\"']?<?(?:mailto:)?([A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)>?[\"']?"
    r"(?:\s*[:,.]?\s*(?:\(.*\))?\s*(?:\[.*\])?\s*(?:\s+on\s+\w.*)?$|\.\.\.\s.*$|:\s+(?:host\b|[245]\d\d\b|[45]\.\d).*$)",
    re.I,
)
_INLINE_RCPT = re.compile(
    r"(?:delivery to the following recipients? (?:failed|has been delayed)[^\n]*\n\s*|"
    r"(?:could not be |was not |wasn'?t |couldn'?t be |can ?not be |unable to be )delivered to:?\s*|"
    r"(?:following (?:address(?:es)?|recipients?)[^\n]{0,80}:\s*\n\s*)|RCPT TO:\s*|"
    r"message to\s+|delivery to\s+|error delivering your (?:mail|message) to\s+|rejected recipient\s+|couldn'?t deliver[^\n]{0,30} to\s+|"
    r"доставить (?:письмо|сообщение) (?:на адрес|адресату|получателю)\s*|адресату\s+|получателю\s+)"
    r"[\"'<]*(?:mailto:)?([A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)",
    re.I,
)


def _report_text(text: str) -> tuple[str, str]:
    """Split a bounce text into (report, copy of the original)."""
    m = _ORIGINAL_MARKER.search(text)
    if m is None:
        # A copy of the original often starts with its Received:/Return-Path: headers.
        m2 = re.search(r"^(?:Return-Path|Received|Message-ID|DKIM-Signature):", text, re.I | re.M)
        if m2 is not None and m2.start() > 40:
            return text[: m2.start()], text[m2.start() :]
        return text, ""
    return text[: m.start()], text[m.end() :]


def _find_original_id(*texts: str) -> str:
    for t in texts:
        if not t:
            continue
        m = re.search(r"^\s*Message-I[Dd]\s*:\s*(.+(?:\n[ \t]+.+)?)", t, re.I | re.M)
        if m:
            ids = msgid_list(m.group(1))
            if ids:
                return ids[0]
    return ""


_RCPT_SECTION = re.compile(
    r"did not reach the following recipient\(?s?\)?:?|the following recipient\(s\) could not be reached:?",
    re.I,
)


def _text_recipients(report: str, own: set[str], failed_hdr: str) -> list[tuple[str, str]]:
    """(address, diagnostic context) pairs from a free-text report."""
    found: dict[str, str] = {}
    sec = _RCPT_SECTION.search(report)
    if sec is not None:
        # Exchange: "Your message To: <the original To> ... did not reach the following recipient(s):"
        report = report[sec.end() :]
    lines = report.replace("\r\n", "\n").split("\n")

    def context(i: int) -> str:
        out: list[str] = []
        m0 = _ADDR_LINE.match(lines[i])
        first = normalize_address(m0.group(1)) if m0 else ""
        if m0 and re.match(r"\s*[45]\d\d[ -]", lines[i]):
            return lines[i].strip()  # a sendmail transcript line: "554 <addr>... diagnostic"
        for j in range(i, min(i + 8, len(lines))):
            mj = _ADDR_LINE.match(lines[j]) if j > i else None
            if mj and normalize_address(mj.group(1)) != first:
                break
            if lines[j].strip():
                out.append(lines[j].strip())
        return " ".join(out)[:1000]

    for addr in _ADDR.findall(failed_hdr):
        a = normalize_address(addr)
        if a and a not in own:
            found.setdefault(a, "")
    for i, line in enumerate(lines):
        m = _ADDR_LINE.match(line)
        if m:
            a = normalize_address(m.group(1))
            if (a and a not in own and a not in found) or (a in found and not found[a]):
                found[a] = context(i)
    if not found:
        for m in _INLINE_RCPT.finditer(report):
            a = normalize_address(m.group(1))
            if a and a not in own and a not in found:
                ln = report.count("\n", 0, m.start())
                found[a] = context(ln)
    if not found:
        # Last resort: the first address in the report that is not a daemon or the sender.
        for i, line in enumerate(lines):
            for addr in _ADDR.findall(line):
                a = normalize_address(addr)
                if (
                    a
                    and a not in own
                    and not _DAEMON.match(a)
                    and not a.startswith(("postmaster@", "mailer-daemon@"))
                ):
                    found[a] = context(i)
                    break
            if found:
                break
    # Diagnostics without a recipient nearby: use the whole report.
    return [(a, d or report[:1500]) for a, d in found.items()]


_STRONG_BODY = re.compile(
    r"this message was created automatically by mail delivery software|i'?m afraid i wasn'?t able to deliver|"
    r"could not be delivered to:|delivery to the following recipients? (?:failed|has been delayed)|"
    r"the following addresses had (?:permanent )?fatal errors|transcript of session follows|"
    r"we had trouble delivering your message|rejected recipient <|this is the mail system at host|"
    r"your message (?:could not|cannot) be delivered|delivery has failed to these recipients|"
    r"the original message was received at|this is an automatically generated delivery status notification|"
    r"did not reach the following recipient|"
    r"message delivery to .{1,80} failed|unable to deliver (?:the )?message to|"
    r"送信できませんでした|доставить не удалось|не может быть доставлено",
    re.I,
)
# Every alternative of _STRONG_BODY contains one of these anchors, at most _BEFORE characters after
# the start of the match and ending at most _AFTER characters after the anchor's end (tested). So the
# alternation, which the regex engine tries at every position of the text, only needs to be tried
# around each anchor: a text without one (nearly all mail) costs a few C-speed substring searches.
# (Not plain "deliver": business mail is full of "delivery dates".)
_STRONG_ANCHORS = (
    "mail delivery software", "able to deliver", "be delivered", "delivery to the following recipient",
    "trouble delivering", "delivery has failed", "delivery status notification", "message delivery to",
    "fatal errors", "transcript of session", "rejected recipient", "mail system at host",
    "original message was received", "did not reach", "送信できませんでした", "доставить", "доставлено",
)
_BEFORE, _AFTER = 80, 120


def _strong_body(text: str) -> bool:
    low = text.lower()
    if len(low) != len(text):  # a case mapping changed the length: offsets differ, search it all
        return _STRONG_BODY.search(text) is not None
    for anchor in _STRONG_ANCHORS:
        at = low.find(anchor)
        while at != -1:
            if _STRONG_BODY.search(text, max(0, at - _BEFORE), at + len(anchor) + _AFTER):
                return True
            at = low.find(anchor, at + 1)
    return False


_HARD_DAEMON = re.compile(
    r"^(?:mailer-daemon|mailer_daemon|mail-daemon|maildaemon|double-bounce|mailerdaemon)(?:@|$)", re.I
)


# Bodies only a delivery failure report has (decisive even with a "Re:" subject).
_DECISIVE_BODY = re.compile(r"^Error: [^\n]{0,80}\n+Error message below:\s*\n\s*[45]\d\d\b", re.I | re.M)


# Each search below is run on every message, nearly always in vain; a substring test (which the
# match implies: casefold() folds what IGNORECASE matches for these letters) goes first. The searches
# alone were a tenth of the parse worker's time on bench/import_bench.py: the SES pattern has no
# literal prefix, so it was tried at every position of the text.
_SNS = {kind: re.compile(r'\\?"notificationType\\?"\s*:\s*\\?"' + kind) for kind in ("Bounce", "Complaint")}
_ARF_ABUSE = re.compile(r"^Feedback-Type\s*:\s*abuse", re.I | re.M)


def _sns_notification(text: str, kind: str) -> bool:
    """An Amazon SES notification of this kind (JSON, escaped or not) in the first 3,000 characters."""
    head = text[:3000]
    return "notificationType" in head and _SNS[kind].search(head) is not None


def _decisive_body(text: str) -> bool:
    head = text[:2000]
    return "error message below" in head.casefold() and _DECISIVE_BODY.search(head) is not None


def _arf_abuse_in_body(text: str) -> bool:
    head = text[:5000]
    return "feedback-type" in head.casefold() and _ARF_ABUSE.search(head) is not None


def _looks_like_bounce(inp: BounceInput) -> bool:
    h = inp.headers
    if inp.report_type == "delivery-status" or inp.delivery_status:
        return True
    if "x-failed-recipients" in h:
        return True
    if _sns_notification(inp.text, "Bounce"):
        return True
    if _HARD_DAEMON.match(inp.from_address) or _HARD_DAEMON.match(str(h.get("from", "")).strip()):
        return True
    if _decisive_body(inp.text):
        return True
    is_reply = (
        bool(re.match(r"^\s*(?:re|aw|sv|ответ|fwd?|пересл)\s*:", inp.subject, re.I)) or "in-reply-to" in h
    )
    if is_reply:
        # A person answering or forwarding a bounce is not a bounce (a daemon never writes "Re:").
        return False
    if _strong_body(inp.text[:4000]):
        return True
    from_daemon = bool(_DAEMON.match(inp.from_address)) or bool(
        _FROM_NAME_DAEMON.search(str(h.get("from", "")))
    )
    subj = bool(_BOUNCE_SUBJECT.search(inp.subject))
    if from_daemon and (subj or not inp.subject):
        return True
    if subj and (from_daemon or re.search(r"^\s*<>\s*$", str(h.get("return-path", "")))):
        return True
    return bool(
        subj
        and re.search(
            r"(?:delivery|deliver).{0,60}(?:failed|failure|problem|unsuccessful)|could not be delivered|permanent (?:fatal )?error|"
            r"not be delivered|undeliverable|this is an automatically generated delivery status|mail delivery software|"
            r"did not reach the following|couldn'?t be delivered|your message wasn'?t delivered|"
            r"не (?:может|удалось|было) (?:быть )?доставлен|недоставлен",
            inp.text[:5000],
            re.I,
        )
    )


_ARF_FIELD = re.compile(r"^Feedback-Type\s*:\s*([\w-]+)", re.I | re.M)


def detect_bounce(inp: BounceInput) -> BounceInfo:
    """Classify a message as bounce / complaint / neither and extract what the CRM needs."""
    # ARF (RFC 5965) complaints.
    if inp.report_type == "feedback-report" or inp.feedback_report:
        fb = "\n".join(inp.feedback_report)
        m = _ARF_FIELD.search(fb)
        ftype = m.group(1).lower() if m else ""
        orig = ""
        rm = re.search(r"^Original-Rcpt-To\s*:\s*(.+)$", fb, re.I | re.M)
        if rm:
            orig = normalize_address(rm.group(1))
        return BounceInfo(
            is_complaint=True,
            kind="arf",
            feedback_type=ftype or "abuse",
            original_message_id=(inp.original_message_ids[0] if inp.original_message_ids else "")
            or _find_original_id(*inp.original_headers, inp.text),
            recipients=(BounceRecipient(orig, "", "complained", False, "feedback"),) if orig else (),
        )
    if not inp.delivery_status and _arf_abuse_in_body(inp.text) and "version" in inp.text[:5000].lower():
        m = _ARF_FIELD.search(inp.text)
        return BounceInfo(is_complaint=True, kind="arf", feedback_type=m.group(1).lower() if m else "abuse",
                          original_message_id=_find_original_id(inp.text))  # fmt: skip
    if _sns_notification(inp.text, "Complaint"):
        m = re.search(r'"complaintFeedbackType"\s*:\s*"([\w-]+)"', inp.text)
        return BounceInfo(is_complaint=True, kind="arf", feedback_type=m.group(1).lower() if m else "abuse")
    ml = _mailing_list_error(inp)
    if ml is not None:
        return ml
    if not _looks_like_bounce(inp):
        return BounceInfo()
    own = {inp.from_address} if inp.from_address else set()
    orig_id = (inp.original_message_ids[0] if inp.original_message_ids else "") or _find_original_id(
        *inp.original_headers
    )
    recipients: list[BounceRecipient] = []
    reporting = ""
    kind = "dsn"
    report, copy = _report_text(inp.text)
    dsn_parts = inp.delivery_status
    in_text = False
    if not dsn_parts:
        # A DSN whose MIME structure is broken: its fields are in the text.
        fm = re.search(r"^(?:Reporting-MTA|Original-Recipient|Final-Recipient)\s*:", inp.text, re.I | re.M)
        if fm is not None and re.search(r"^(?:Action|Status)\s*:", inp.text[fm.start() :], re.I | re.M):
            dsn_parts = (inp.text[fm.start() :],)
            in_text = True
    if dsn_parts:
        recipients, reporting = _parse_dsn(dsn_parts)
        # Many MTAs put a better diagnostic (and the SMTP stage) in the human-readable part.
        others = [r.address for r in recipients]
        enriched: list[BounceRecipient] = []
        for r in recipients:
            ctx = _context_for(report, r.address, others)
            reason = r.reason
            if ctx and (reason == "undefined" or not r.diagnostic):
                reason = classify_reason(r.diagnostic + " " + ctx, r.status, r.action)
            where = ctx or (report if len(recipients) == 1 else "")
            stage = smtp_stage(where) or (smtp_stage(report) if len(recipients) == 1 else "")
            reason = adjust_reason(reason, r.status, stage, where + " " + r.diagnostic, dsn=not in_text)
            enriched.append(
                BounceRecipient(
                    r.address,
                    r.status,
                    r.action,
                    is_hard(reason, r.status, r.reply_code),
                    reason,
                    r.reply_code,
                    r.diagnostic or ctx[:500],
                )
            )
        recipients = enriched
    if not recipients and "notificationType" in inp.text[:3000]:
        recipients = _ses_json(inp.text)
        kind = "ses"
    if not recipients:
        kind = "text"
        if not orig_id:
            orig_id = _find_original_id(copy)
        found = _text_recipients(report, own, str(inp.headers.get("x-failed-recipients", "")))
        for addr, diag in found:
            rcpt = _text_recipient(addr, diag, inp.subject)
            if rcpt.reason == "undefined" and len(found) == 1 and diag != report:
                # The lines around the address said nothing useful: read the whole report.
                whole = _text_recipient(addr, report[:3000], inp.subject)
                if whole.reason != "undefined":
                    rcpt = whole
            recipients.append(rcpt)
    if not recipients and kind == "text" and inp.original_text and _DAEMON.match(inp.original_from):
        # A bounce forwarding another bounce (a relay or gateway): read the inner report.
        inner, _ = _report_text(inp.original_text)
        for addr, diag in _text_recipients(inner, own | {inp.original_from}, ""):
            recipients.append(_text_recipient(addr, diag, inp.subject))
    if not recipients and kind == "text":
        # No report names a recipient ("Delivery report unavailable"): the returned message's To:.
        rcpts = list(inp.original_recipients)
        if not rcpts and copy:
            hm = re.search(r"^To:[ \t]*(.+)$", copy[:5000], re.I | re.M)
            rcpts = [normalize_address(a) for a in _ADDR.findall(hm.group(1))] if hm else []
        to_hdr = {normalize_address(x) for x in _ADDR.findall(str(inp.headers.get("to", "")))}
        # Never the bounce's own addressee (the sender of the original): a nested bounce's To.
        for a in dict.fromkeys(x for x in rcpts if x and x not in own and x not in to_hdr):
            recipients.append(_text_recipient(a, report[:3000], inp.subject))
    if not orig_id:
        orig_id = _find_original_id(copy)
    failed = [r for r in recipients if r.action not in ("delivered", "relayed", "expanded")]
    if recipients and not failed:
        # A success DSN (delivery notification): not a bounce.
        return BounceInfo(
            kind=kind, recipients=tuple(recipients), original_message_id=orig_id, reporting_mta=reporting
        )
    return BounceInfo(
        is_bounce=True,
        kind=kind,
        recipients=tuple(recipients),
        original_message_id=orig_id,
        reporting_mta=reporting,
    )


def _text_recipient(addr: str, diag: str, subject: str) -> BounceRecipient:
    sm = _STATUS_CODE.search(diag)
    status = sm.group(0) if sm else ""
    rc = _FAIL_REPLY_CODE.search(diag)
    reply_code = rc.group(1) if rc else ""
    if not status and reply_code:
        status = f"{reply_code[0]}.0.0"
    delayed = bool(
        re.search(
            r"delay|will (?:continue|keep) trying|not yet been delivered|temporar|deferred|warning",
            diag + subject,
            re.I,
        )
    )
    action = "delayed" if (status.startswith("4") or (delayed and not status.startswith("5"))) else "failed"
    reason = classify_reason(diag, status, action)
    if reason in ("undefined", "expired") and subject:
        # The subject ("Returned mail: User unknown") speaks only when the report itself does not.
        reason = classify_reason(diag + " " + subject, status, action)
    if not status:
        status = "4.0.0" if action == "delayed" else "5.0.0"
    reason = adjust_reason(reason, status, smtp_stage(diag), diag)
    return BounceRecipient(
        addr,
        status,
        action,
        is_hard(reason, status, reply_code),
        reason,
        reply_code,
        " ".join(diag.split())[:500],
    )


_FML_ERROR = re.compile(
    r"(?P<rejected>are not (?:a )?member|not a member of this mailing list|post(?:ing)? (?:is )?(?:restricted|not allowed))|"
    r"(?P<systemerror>loop alert|duplicated message-id|mail loop)",
    re.I,
)


def _mailing_list_error(inp: BounceInput) -> BounceInfo | None:
    """fml (a mailing-list manager) returning a post: the list is the recipient that refused it."""
    if "fml" not in str(inp.headers.get("x-mlserver", "")).lower():
        return None
    m = _FML_ERROR.search(inp.subject) or _FML_ERROR.search(inp.text[:2000])
    if m is None:
        return None
    reason = "rejected" if m.group("rejected") else "systemerror"
    am = _ADDR.search(inp.text[:2000])
    addr = normalize_address(am.group(1)) if am else ""
    if not addr:
        return None
    diag = " ".join(inp.text[:300].split())
    return BounceInfo(
        is_bounce=True,
        kind="text",
        recipients=(BounceRecipient(addr, "5.0.0", "failed", False, reason, "", diag),),
        original_message_id=_find_original_id(inp.text),
    )


def _ses_json(text: str) -> list[BounceRecipient]:
    """Amazon SES/SNS bounce notifications (JSON in the body)."""
    import json

    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        return []
    try:
        data = json.loads(text[start : end + 1])
    except ValueError:
        return []
    if isinstance(data, dict) and isinstance(data.get("Message"), str):
        # An SNS envelope: the SES notification is a JSON string inside it.
        try:
            data = json.loads(data["Message"])
        except ValueError:
            return []
    if not isinstance(data, dict) or str(data.get("notificationType", "")).lower() != "bounce":
        return []
    bounce = data.get("bounce") or {}
    permanent = str(bounce.get("bounceType", "")).lower() == "permanent"
    out: list[BounceRecipient] = []
    for r in bounce.get("bouncedRecipients") or []:
        addr = normalize_address(str(r.get("emailAddress", "")))
        if not addr:
            continue
        diag = str(r.get("diagnosticCode", ""))
        sm = _STATUS_CODE.search(str(r.get("status", "")) + " " + diag)
        status = sm.group(0) if sm else ("5.0.0" if permanent else "4.0.0")
        action = str(r.get("action", "failed")).lower() or "failed"
        reason = classify_reason(diag, status, action)
        rc = _REPLY_CODE.search(diag)
        out.append(
            BounceRecipient(
                addr, status, action, is_hard(reason, status), reason, rc.group(1) if rc else "", diag[:500]
            )
        )
    return out


def _context_for(report: str, address: str, others: list[str] | None = None) -> str:
    low = report.lower()
    i = low.find(address.lower())
    if i < 0:
        return ""
    end = min(len(report), i + 800)
    for o in others or ():
        if o != address:
            j = low.find(o.lower(), i + len(address))
            if 0 <= j < end:
                end = j
    return " ".join(report[i:end].split())
