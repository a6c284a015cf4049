"""Address rules: provider canonicalisation, free-mail domains, automated senders, ignore lists."""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from importlib import resources

# Providers that deliver ``local+tag@`` to ``local@`` (plus-tags ignored) ...
_PLUS_TAG_DOMAINS = frozenset(
    {
        "gmail.com",
        "googlemail.com",
        "outlook.com",
        "hotmail.com",
        "live.com",
        "msn.com",
        "icloud.com",
        "me.com",
        "mac.com",
        "fastmail.com",
        "fastmail.fm",
        "proton.me",
        "protonmail.com",
        "pm.me",
        "yandex.ru",
        "yandex.com",
        "yandex.by",
        "yandex.kz",
        "yandex.ua",
        "ya.ru",
        "mail.ru",
        "bk.ru",
        "list.ru",
        "inbox.ru",
        "internet.ru",
        "rambler.ru",
    }
)
# ... and providers that also ignore dots in the local part.
_DOT_BLIND_DOMAINS = frozenset({"gmail.com", "googlemail.com"})
# Domain aliases: one mailbox, several domains.
_DOMAIN_ALIASES = {
    "googlemail.com": "gmail.com",
    "ya.ru": "yandex.ru",
    "yandex.com": "yandex.ru",
    "yandex.by": "yandex.ru",
    "yandex.kz": "yandex.ru",
    "yandex.ua": "yandex.ru",
}
_YANDEX = "yandex.ru"  # Yandex treats "." and "-" in the local part as the same character

_AUTOMATED_LOCAL = re.compile(
    r"^(?:no[-_.]?reply|do[-_.]?not[-_.]?reply|dont[-_.]?reply|noreply[-_.].*|.*[-_.]no[-_.]?reply|"
    r"mailer[-_.]daemon|postmaster|bounces?|bounces?[-+_.].*|.*[-_.]bounces?|notifications?|notify|"
    r"automailer|auto[-_.]?reply|autoresponder|daemon|robot|listserv|majordomo|mailman|.*-request|"
    r"owner-.*|.*-owner|bounce-.*|msprvs\d*=.*|prvs=.*)$"
)


def split(address: str) -> tuple[str, str]:
    local, _, domain = address.strip().lower().rpartition("@")
    return local, domain


def domain_of(address: str) -> str:
    return split(address)[1]


@lru_cache(maxsize=1 << 16)  # pure and called for every participant of every message
def canonical_address(address: str) -> str:
    """The provider-normalised form: lower-case; plus-tags and (Gmail) dots removed; domain aliases."""
    local, domain = split(address)
    if not local:
        return address.strip().lower()
    if "%" in local or local.startswith('"'):
        return f"{local}@{domain}"
    domain = _DOMAIN_ALIASES.get(domain, domain)
    if domain in _PLUS_TAG_DOMAINS and "+" in local:
        local = local.split("+", 1)[0] or local
    if domain in _DOT_BLIND_DOMAINS:
        local = local.replace(".", "")
    elif domain == _YANDEX:
        local = local.replace(".", "-")
    return f"{local}@{domain}"


@lru_cache(maxsize=1)
def freemail_domains() -> frozenset[str]:
    text = resources.files("mailroom.routing").joinpath("data/freemail_domains.txt").read_text("utf-8")
    return frozenset(
        line.strip().lower() for line in text.splitlines() if line.strip() and not line.startswith("#")
    )


def is_freemail(domain: str) -> bool:
    return domain.lower().strip(".") in freemail_domains()


def is_automated_address(address: str) -> bool:
    """no-reply@, mailer-daemon@, bounces+...@, list -request addresses and the like."""
    local, _ = split(address)
    return bool(local) and bool(_AUTOMATED_LOCAL.match(local))


def domain_matches(domain: str, patterns: Iterable[str]) -> str | None:
    """The pattern that ``domain`` equals or is a subdomain of, if any."""
    domain = domain.lower()
    for p in patterns:
        if domain == p or domain.endswith("." + p):
            return p
    return None
