"""DKIM key lookups through a real DNS server on loopback (dnspython), in-process and in the parse
workers."""

from __future__ import annotations

import pytest

from mailroom.parsing.dns import BREAKER_AFTER, TxtResolver
from mailroom.parsing.workers import ParseJob, ParsePool
from mailroom.testing.dns import closed_udp_port, loopback_dns

from .test_authn import _signed, key  # noqa: F401 - the fixture


def test_a_key_is_looked_up_once_and_a_missing_name_is_none() -> None:
    record = b"v=DKIM1; k=rsa; p=" + b"A" * 400  # longer than one TXT string: split and joined again
    with loopback_dns({"sel._domainkey.example.com": [record]}) as server:
        resolver = TxtResolver([server.server], timeout=2)
        assert resolver(b"sel._domainkey.example.com.") == record
        assert resolver(b"sel._domainkey.example.com.") == record
        assert resolver(b"nope._domainkey.example.com.") is None
        assert resolver(b"nope._domainkey.example.com.") is None
        assert resolver.lookups == 2
        assert server.queries == ["sel._domainkey.example.com.", "nope._domainkey.example.com."]


def test_a_resolver_that_never_answers_is_skipped_after_a_few_names() -> None:
    resolver = TxtResolver([f"127.0.0.1:{closed_udp_port()}"], timeout=0.2)
    names = [f"s{i}._domainkey.example.com.".encode() for i in range(BREAKER_AFTER + 3)]
    assert [resolver(n) for n in names] == [None] * len(names)
    assert resolver.lookups == BREAKER_AFTER  # then skipped: mail is unauthenticated, never held up


def test_the_parse_workers_verify_dkim_through_the_given_servers(key: tuple[bytes, bytes]) -> None:  # noqa: F811
    priv, record = key
    raw = _signed(priv, "example.com", "a@example.com")
    with loopback_dns({"sel._domainkey.example.com": [record]}) as server:
        pool = ParsePool(1)
        try:
            jobs = [ParseJob(1, raw, None, (), verify_dkim=True, dns_servers=(server.server,), dns_timeout=2)]
            (parsed,) = pool.parse(jobs)
            (unverified,) = pool.parse([ParseJob(2, raw, None, ())])
        finally:
            pool.shutdown()
    assert not isinstance(parsed, Exception) and not isinstance(unverified, Exception)
    assert (parsed.auth.dkim, parsed.auth.dkim_domains, parsed.auth.dmarc) == ("pass", ("example.com",), "pass")
    assert (unverified.auth.dkim, unverified.auth.source) == ("none", "none")


@pytest.mark.parametrize("server", ["10.0.0.1", "10.0.0.1:5353", "[::1]:5353"])
def test_servers_are_host_or_host_port(server: str) -> None:
    from mailroom.parsing.dns import _split

    assert _split(server) == {"10.0.0.1": ("10.0.0.1", 53), "10.0.0.1:5353": ("10.0.0.1", 5353),
                              "[::1]:5353": ("::1", 5353)}[server]


def test_without_a_resolver_configuration_keys_are_missing_not_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    import dns.resolver

    def no_conf(self: object, filename: str = "/etc/resolv.conf") -> None:
        raise dns.resolver.NoResolverConfiguration("no nameservers")

    monkeypatch.setattr(dns.resolver.Resolver, "read_resolv_conf", no_conf)
    resolver = TxtResolver([], timeout=0.2)
    assert resolver(b"sel._domainkey.example.com.") is None
