from __future__ import annotations

import base64

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from mailroom.parsing.authn import aligned, organizational_domain
from mailroom.parsing.mime import parse_message

from .helpers import message


@pytest.fixture(scope="module")
def key() -> tuple[bytes, bytes]:
    return make_key()


def make_key() -> tuple[bytes, bytes]:
    """An RSA key: (private PEM, the DKIM TXT record of its public half)."""
    k = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    priv = k.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    pub = k.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return priv, b"v=DKIM1; k=rsa; p=" + base64.b64encode(pub)


def _signed(priv: bytes, d: str, from_addr: str, body: str = "Hello\r\n") -> bytes:
    raw = message(
        f"From: Sender <{from_addr}>\nTo: crm@example.org\nSubject: test\nMessage-ID: <m@{d}>\nDate: Tue, 4 Jun 2024 12:00:00 +0000",
        body,
    )
    sig = dkim.sign(
        raw, b"sel", d.encode(), priv, include_headers=[b"from", b"to", b"subject", b"message-id", b"date"]
    )
    return sig + raw


def _dns(record: bytes, calls: list[bytes]):
    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        calls.append(name)
        return record if name.startswith(b"sel._domainkey.") else None

    return dnsfunc


def test_dkim_pass_and_relaxed_alignment(key: tuple[bytes, bytes]) -> None:
    priv, record = key
    calls: list[bytes] = []
    p = parse_message(
        _signed(priv, "example.co.uk", "a@mail.example.co.uk"), verify_dkim=True, dnsfunc=_dns(record, calls)
    )
    assert calls == [b"sel._domainkey.example.co.uk."]
    assert (p.auth.dkim, p.auth.dkim_domains, p.auth.dmarc, p.auth.source) == (
        "pass",
        ("example.co.uk",),
        "pass",
        "dkim",
    )


def test_dkim_pass_but_not_aligned(key: tuple[bytes, bytes]) -> None:
    priv, record = key
    calls: list[bytes] = []
    p = parse_message(
        _signed(priv, "esp.example.net", "a@shop.msk.ru"), verify_dkim=True, dnsfunc=_dns(record, calls)
    )
    # No signature speaks for shop.msk.ru: none is tried, and a stranger's d= costs no lookup.
    assert (p.auth.dkim, p.auth.dkim_domains, p.auth.dmarc, calls) == ("none", (), "none", [])


def test_tampered_body_fails(key: tuple[bytes, bytes]) -> None:
    priv, record = key
    raw = _signed(priv, "example.com", "a@example.com").replace(b"Hello", b"Hellx")
    p = parse_message(raw, verify_dkim=True, dnsfunc=_dns(record, []))
    # Unauthenticated, not forged: only a receiving server that saw the policy can say "fail".
    assert (p.auth.dkim, p.auth.dkim_domains, p.auth.dmarc) == ("fail", (), "none")


def test_every_signature_is_tried(key: tuple[bytes, bytes]) -> None:
    priv, record = key
    good = _signed(priv, "example.com", "a@example.com")
    bad = dkim.sign(good, b"other", b"broken.example", priv, include_headers=[b"from"])
    p = parse_message(bad + good, verify_dkim=True, dnsfunc=_dns(record, []))
    assert (p.auth.dkim, p.auth.dkim_domains, p.auth.dmarc) == ("pass", ("example.com",), "pass")


def test_no_dns_no_network(key: tuple[bytes, bytes]) -> None:
    priv, _ = key
    p = parse_message(_signed(priv, "example.com", "a@example.com"), verify_dkim=True)
    assert p.auth.dkim == "fail"
    assert parse_message(_signed(priv, "example.com", "a@example.com")).auth.source == "none"


def test_a_signature_with_a_body_length_does_not_vouch_for_what_follows(key: tuple[bytes, bytes]) -> None:
    priv, record = key
    raw = message(
        "From: Sender <a@example.com>\nTo: crm@example.org\nSubject: test\nMessage-ID: <l@example.com>",
        "Hello\r\n",
    )
    sig = dkim.sign(raw, b"sel", b"example.com", priv, include_headers=[b"from", b"subject"], length=True)
    signed = sig + raw
    # dkimpy itself accepts the appended text: the signature covers the first l= bytes only.
    appended = signed + b"Pay to account 4081 7810 0000 0000 0001.\r\n"
    assert dkim.verify(appended, dnsfunc=_dns(record, [])) is True
    for raw_in in (signed, appended):
        calls: list[bytes] = []
        p = parse_message(raw_in, verify_dkim=True, dnsfunc=_dns(record, calls))
        assert (p.auth.dkim, p.auth.dkim_domains, p.auth.dmarc, calls) == ("none", (), "none", [])


AR = (
    "Authentication-Results: mx.crm.example.org; dkim=pass header.d=example.com header.s=s1;\n"
    " spf=pass smtp.mailfrom=a@example.com; dmarc=pass header.from=example.com\n"
    "Authentication-Results: evil.example; dkim=fail; dmarc=fail\n"
)


def test_trusted_authentication_results_only() -> None:
    raw = message(AR + "From: a@example.com\nSubject: s", "x")
    p = parse_message(raw, trusted_authserv_ids=("mx.crm.example.org",))
    assert (p.auth.dkim, p.auth.dkim_domains, p.auth.dmarc, p.auth.spf, p.auth.source) == (
        "pass",
        ("example.com",),
        "pass",
        "pass",
        "authres",
    )
    p = parse_message(raw, trusted_authserv_ids=("evil.example",))
    assert (p.auth.dkim, p.auth.dmarc, p.auth.source) == ("fail", "fail", "authres")
    p = parse_message(raw)
    assert (p.auth.dkim, p.auth.dmarc, p.auth.source) == ("none", "none", "none")
    p = parse_message(raw, trusted_authserv_ids=("other.example",))
    assert p.auth.source == "none"


def test_organizational_domain() -> None:
    assert organizational_domain("mail.example.co.uk") == "example.co.uk"
    assert organizational_domain("a.b.shop.msk.ru") == "shop.msk.ru"
    assert organizational_domain("news.example.com") == "example.com"
    assert organizational_domain("example.com") == "example.com"
    assert aligned("bounce.example.com", "example.com")
    assert not aligned("example.co.uk", "other.co.uk")


def _library_parse(value: str) -> str:
    import authres

    try:
        return str(authres.AuthenticationResultsHeader.parse("Authentication-Results: " + " ".join(value.split())))
    except Exception as exc:
        return f"error: {type(exc).__name__}"


def _our_parse(value: str) -> str:
    from mailroom.parsing.authn import parse_authres_value

    try:
        return str(parse_authres_value(value))
    except Exception as exc:
        return f"error: {type(exc).__name__}"


def _corpus_authres_values() -> list[str]:
    from pathlib import Path

    from mailroom.parsing.rawheaders import parse_header_block

    values = []
    for path in sorted((Path(__file__).parent.parent / "corpora").rglob("*")):
        if path.is_file() and path.suffix in (".eml", ".txt", "") and path.stat().st_size < 2_000_000:
            block, _ = parse_header_block(path.read_bytes())
            values.extend(block.get_all("authentication-results"))
    return values


def test_our_authres_parser_reads_every_corpus_header_as_the_library_does() -> None:
    values = _corpus_authres_values()
    assert len(values) >= 190  # the corpora's real headers: Google, Microsoft, Yandex, Mail.ru, rspamd ...
    parsed = [_our_parse(v) for v in values]
    assert parsed == [_library_parse(v) for v in values]
    assert sum(not p.startswith("error") for p in parsed) >= 140


_AR_TOKENS = [
    "mx.example.org", '"mx.example.org"', "(comment)", "(nested (comment))", "1", ";", " ", "  ", "none",
    "dkim", "spf", "dmarc", "arc", "auth", "=", "pass", "fail", "neutral", "reason", '"quoted \\" text"',
    "header.d", "header.i", "smtp.mailfrom", "policy.dmarc", "@example.com", "a@b.example", ".", "/", "1",
    "header.b=AbC+/x=", "(p=none dis=none)", "\t", "é", "x-custom", "policy.ptype",
]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(_AR_TOKENS), max_size=24))
def test_our_authres_parser_agrees_with_the_library_on_generated_headers(tokens: list[str]) -> None:
    value = "".join(tokens)
    assert _our_parse(value) == _library_parse(value)


def test_a_header_of_another_server_is_skipped_but_a_commented_id_is_read() -> None:
    from mailroom.parsing.authn import parse_trusted_authres
    from mailroom.parsing.rawheaders import parse_header_block

    def verdict(ar: str) -> tuple[str, str]:
        block, _ = parse_header_block(message(ar + "From: a@example.com\nSubject: s", "x"))
        r = parse_trusted_authres(block, ("mx.crm.example.org",), "example.com")
        return ("-", "-") if r is None else (r.dkim, r.authserv_id)

    assert verdict("Authentication-Results: evil.example; dkim=pass header.d=example.com\n") == ("-", "-")
    assert verdict("Authentication-Results: mx.crm.example.org; dkim=pass header.d=example.com\n") == (
        "pass", "mx.crm.example.org")
    assert verdict("Authentication-Results: (ours) mx.crm.example.org 1; dkim=fail header.d=example.com\n") == (
        "fail", "mx.crm.example.org")
    # Another server's header first, ours second: ours is the verdict.
    assert verdict(
        "Authentication-Results: MX.CRM.EXAMPLE.ORG.evil; dkim=pass header.d=example.com\n"
        "Authentication-Results: Mx.Crm.Example.Org; dkim=fail header.d=example.com\n"
    ) == ("fail", "mx.crm.example.org")
