"""Sender authentication verdict: DKIM (dkimpy) + DMARC alignment, or a trusted Authentication-Results.

Two sources, in this order:

1. ``verify_dkim=True``: the DKIM-Signatures (of the first ten) whose d= is aligned (relaxed,
   organizational domain) with the From domain are verified with dkimpy; no other signature can
   authenticate the sender, and a stranger's signatures so cost no DNS lookup. The lookup goes
   through the injected ``dnsfunc(name: bytes, timeout: int = 5) -> bytes | str | None``
   (``parsing.dns.TxtResolver`` in production, a loopback DNS server or a function in tests; without
   a dnsfunc nothing is looked up and signatures are reported as "fail"). A signature with an
   ``l=`` body length vouches for the first ``l`` bytes only: anyone may append to the rest, so such
   a signature is not tried. A valid one is DMARC "pass".
2. The ``Authentication-Results`` header added by one of ``trusted_authserv_ids`` (our own receiving
   servers) is parsed with ``authres``; headers from any other authserv-id are ignored, since anyone
   can write one. It is used when our own check found no aligned pass, and it alone can say
   ``dmarc=fail``.

Our own check never says "fail" for DMARC: a missing or broken signature is *unauthenticated* (keys
rotate, lists rewrite bodies, some providers do not sign), which the resolver weighs as such, not
as a forgery. Only a receiving server we trust, which also saw SPF and the domain's policy, can say
that a message is forged.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, Protocol

from mailroom.parsing.rawheaders import parse_header_block
from mailroom.parsing.records import pickled_by_fields

# Public suffixes with two labels that matter for our customers; the rest take the last two labels.
TWO_LEVEL_SUFFIXES = frozenset(
    {
        "co.uk", "org.uk", "ac.uk", "gov.uk", "me.uk", "ltd.uk", "plc.uk", "net.uk",
        "com.ru", "net.ru", "org.ru", "pp.ru", "msk.ru", "spb.ru", "msk.su", "spb.su", "nov.ru",
        "com.ua", "net.ua", "org.ua", "kiev.ua", "in.ua", "com.by", "com.kz", "org.kz",
        "com.au", "net.au", "org.au", "co.nz", "co.jp", "ne.jp", "or.jp", "ac.jp", "co.kr",
        "com.br", "com.cn", "com.tr", "co.in", "co.za", "com.mx", "com.ar", "co.il", "com.sg",
    }
)  # fmt: skip

DnsFunc = Callable[..., bytes | str | None]


class _Headers(Protocol):
    def get_all(self, name: str) -> list[str]: ...


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class AuthResult:
    dkim: str = "none"  # "pass" (at least one valid signature), "fail" (signatures, none valid), "none"
    dkim_domains: tuple[str, ...] = ()  # d= of the valid signatures
    dmarc: str = "none"  # "pass" (aligned valid DKIM, or trusted dmarc=pass), "fail", "none"
    spf: str = "none"  # from a trusted Authentication-Results only
    source: str = "none"  # "dkim", "authres" or "none"
    authserv_id: str = ""


def organizational_domain(domain: str) -> str:
    """example.co.uk <- mail.example.co.uk; example.com <- a.b.example.com (small PSL subset)."""
    labels = [x for x in domain.lower().strip(".").split(".") if x]
    if len(labels) <= 2:
        return ".".join(labels)
    if ".".join(labels[-2:]) in TWO_LEVEL_SUFFIXES:
        return ".".join(labels[-3:])
    return ".".join(labels[-2:])


def aligned(d: str, from_domain: str) -> bool:
    return bool(d) and bool(from_domain) and organizational_domain(d) == organizational_domain(from_domain)


def _no_dns(name: bytes, timeout: int = 5) -> None:
    return None


def verify_dkim_signatures(
    raw: bytes, dnsfunc: DnsFunc | None, aligned_with: str | None = None
) -> tuple[int, list[str]]:
    """(number of signatures tried, d= domains of the valid ones). Never raises.

    With ``aligned_with`` (the From domain) only signatures whose d= is aligned with it are tried:
    no other signature can authenticate the sender, and a stranger's signatures then cost no DNS
    lookup (nor time) at all. Signatures with an ``l=`` body length are never tried."""
    try:
        import dkim
    except ImportError:  # pragma: no cover
        return 0, []
    if not _has_candidate(raw, aligned_with):
        # dkimpy reads the whole message (its body split into lines) before it looks at a signature:
        # 57% of a parse's time went there for mail with no signature worth trying.
        return 0, []
    func = dnsfunc or _no_dns

    def _dns(name: bytes, timeout: int = 5) -> bytes | None:
        try:
            value = func(name, timeout=timeout)
        except TypeError:
            value = func(name)
        except Exception:
            return None
        if value is None:
            return None
        return value.encode() if isinstance(value, str) else value

    try:
        d = dkim.DKIM(raw, minkey=1024)
        sigs = [v for k, v in d.headers if k.lower() == b"dkim-signature"]
    except Exception:
        return 0, []
    tried = 0
    valid: list[str] = []
    for idx, sig in enumerate(sigs[:10]):
        if not _usable(_tags(sig), aligned_with):
            continue
        tried += 1
        try:
            ok = d.verify(idx=idx, dnsfunc=_dns)
        except Exception:
            ok = False
        if ok:
            try:
                dom = (
                    d.domain.decode("ascii").lower() if isinstance(d.domain, bytes) else str(d.domain).lower()
                )
            except Exception:
                dom = ""
            if dom:
                valid.append(dom)
    return tried, valid


def _usable(tags: dict[bytes, bytes] | None, aligned_with: str | None) -> bool:
    if tags is None or b"l" in tags:
        return False  # unreadable, or vouches for a prefix only: the rest could be anyone's
    return aligned_with is None or aligned(tags.get(b"d", b"").decode("ascii", "replace"), aligned_with)


def _has_candidate(raw: bytes, aligned_with: str | None) -> bool:
    """Whether the header block holds a signature that would be tried (a cheap look first)."""
    block, _ = parse_header_block(raw)
    return any(
        _usable(_tags(value.encode("ascii", "surrogateescape")), aligned_with)
        for value in block.index.get("dkim-signature", ())[:10]
    )


def _tags(signature: bytes) -> dict[bytes, bytes] | None:
    try:
        from dkim.util import parse_tag_value

        return dict(parse_tag_value(b"".join(signature.split())))
    except Exception:  # a signature we cannot read is not tried (dkimpy would fail it)
        return None


# The authserv-id, when the header starts with a plain token (RFC 8601: a value, so it may also be a
# quoted-string, or follow a comment): what lets a header from someone else's server be skipped
# without parsing it. Anything less plain is parsed.
_PLAIN_AUTHSERV_ID = re.compile(r"\s*([A-Za-z0-9!#$%&'*+.^_`{|}~-]+)\s*(?:[;\s]|$)")


@cache
def _authres_parser() -> tuple[Any, Any]:
    """authres's parser, with the method it spends its time in made cheap (``(class, features)``).

    authres (1.2) consumes its input one token at a time through ``_parse_pattern``, which re-compiles
    the token's pattern and rewrites the remaining text with ``re.sub`` and a callback on every call
    (its own TODO says so): about 0.7 ms for an ordinary header, a quarter of parsing a whole message.
    The subclass keeps the compiled patterns and cuts the match off the text, which is what the
    ``sub(..., count=1)`` does: the same results (tests/parsing/test_authn.py compares the two on
    every header of the corpora and on generated ones), three times faster."""
    import authres
    import authres.core

    class _Header(authres.core.AuthenticationResultsHeader):  # type: ignore[misc]
        _compiled: dict[str, re.Pattern[str]] = {}
        _parse_text: str

        def _parse_pattern(self, pattern: str | re.Pattern[str]) -> re.Match[str] | None:
            text = self._parse_text
            if isinstance(pattern, re.Pattern):  # authres's precompiled ones may be unanchored
                m = pattern.search(text)
                if m:
                    self._parse_text = text[: m.start()] + text[m.end() :]
                return m
            regexp = self._compiled.get(pattern)
            if regexp is None:
                regexp = self._compiled[pattern] = re.compile(r"^" + pattern, re.I)
            m = regexp.match(text)
            if m:
                self._parse_text = text[m.end() :]
            return m

    return _Header, authres.core_features()


def parse_authres_value(value: str) -> Any:
    """One unfolded ``Authentication-Results`` value parsed as ``authres`` parses it (raises on a
    malformed one)."""
    header, features = _authres_parser()
    return header.parse_value(features, " ".join(value.split()))


def parse_trusted_authres(
    headers: _Headers, trusted_authserv_ids: Sequence[str], from_domain: str
) -> AuthResult | None:
    """The verdict of the first Authentication-Results header written by a trusted authserv-id."""
    if not trusted_authserv_ids:
        return None
    trusted = {t.lower() for t in trusted_authserv_ids}
    try:
        import authres  # noqa: F401
    except ImportError:  # pragma: no cover
        return None
    for value in headers.get_all("authentication-results"):
        plain = _PLAIN_AUTHSERV_ID.match(value)
        if plain is not None and plain.group(1).lower() not in trusted:
            continue  # another server's: ignored, not parsed
        try:
            parsed = parse_authres_value(value)
        except Exception:  # noqa: S112 - a malformed header is ignored, others are tried
            continue
        if str(parsed.authserv_id).lower() not in trusted:
            continue
        dkim_res = "none"
        domains: list[str] = []
        dmarc = "none"
        spf = "none"
        for r in parsed.results:
            method = str(r.method).lower()
            result = str(r.result).lower()
            if method == "dkim":
                if result == "pass":
                    dkim_res = "pass"
                    for p in r.properties:
                        if p.type == "header" and p.name in ("d", "i"):
                            dom = str(p.value).rpartition("@")[2].lower()
                            if dom and dom not in domains:
                                domains.append(dom)
                elif dkim_res != "pass" and result in ("fail", "neutral", "policy", "permerror", "temperror"):
                    dkim_res = "fail"
            elif method == "dmarc":
                dmarc = (
                    "pass"
                    if result == "pass"
                    else "fail"
                    if result in ("fail", "quarantine", "reject")
                    else dmarc
                )
            elif method == "spf":
                spf = result
        if dmarc == "none" and dkim_res == "pass" and any(aligned(d, from_domain) for d in domains):
            dmarc = "pass"
        return AuthResult(
            dkim=dkim_res,
            dkim_domains=tuple(domains),
            dmarc=dmarc,
            spf=spf,
            source="authres",
            authserv_id=str(parsed.authserv_id),
        )
    return None


def authenticate(
    raw: bytes,
    headers: _Headers,
    *,
    from_domain: str,
    trusted_authserv_ids: Sequence[str] = (),
    verify_dkim: bool = False,
    dnsfunc: DnsFunc | None = None,
) -> AuthResult:
    """The sender-authentication verdict for one message (see the module docstring)."""
    from_domain = from_domain.lower()
    trusted = parse_trusted_authres(headers, trusted_authserv_ids, from_domain)
    if verify_dkim:
        count, valid = verify_dkim_signatures(raw, dnsfunc, aligned_with=from_domain)
        if count:
            spf = trusted.spf if trusted is not None else "none"
            if valid:  # tried signatures are aligned with the From domain
                return AuthResult("pass", tuple(dict.fromkeys(valid)), "pass", spf, "dkim")
            if trusted is not None and trusted.dmarc != "none":
                return trusted  # e.g. dmarc=pass by aligned SPF at our MX, or its dmarc=fail
            return AuthResult("fail", (), "none", spf, "dkim")
    if trusted is not None:
        return trusted
    if verify_dkim:
        return AuthResult("none", (), "none", "none", "dkim")
    return AuthResult()
