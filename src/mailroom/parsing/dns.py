"""TXT lookups for DKIM keys (dnspython), cached, through the servers the admin names.

``TxtResolver(servers, timeout)`` is the ``dnsfunc`` that ``parsing.authn`` takes: ``servers`` are
``host`` or ``host:port`` strings (empty: the system's resolv.conf). Answers are cached for their
TTL (at most an hour), names that do not exist for five minutes. A resolver that does not answer
costs ``timeout`` once per name; after three such names in a row lookups are skipped for a minute
(mail is then unauthenticated, never held up: a machine without DNS imports at full speed).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Sequence

MAX_TTL = 3600.0
NEGATIVE_TTL = 300.0
FAILED_TTL = 60.0
BREAKER_AFTER = 3  # timeouts in a row
BREAKER_SECONDS = 60.0
CACHE_SIZE = 4096


def _split(server: str) -> tuple[str, int]:
    server = server.strip()
    if server.startswith("["):  # [::1]:5353
        host, _, port = server[1:].partition("]")
        return host, int(port.lstrip(":") or 53)
    if server.count(":") == 1:
        host, _, port = server.partition(":")
        return host, int(port)
    return server, 53


class TxtResolver:
    def __init__(self, servers: Sequence[str] = (), timeout: float = 3.0) -> None:
        import dns.resolver

        if servers:
            pairs = [_split(s) for s in servers]
            self._resolver = dns.resolver.Resolver(configure=False)
            self._resolver.nameservers = [h for h, _ in pairs]
            self._resolver.port = pairs[0][1]
        else:
            try:
                self._resolver = dns.resolver.Resolver()
            except Exception:  # no usable resolv.conf: nothing to ask, every key is missing
                self._resolver = dns.resolver.Resolver(configure=False)
                self._resolver.nameservers = []
        self._resolver.lifetime = timeout
        self._resolver.timeout = timeout
        self._cache: OrderedDict[bytes, tuple[float, bytes | None]] = OrderedDict()
        self._lock = threading.Lock()
        self._timeouts = 0
        self._skip_until = 0.0
        self.lookups = 0  # queries sent (tests and benches read it)

    def _cached(self, name: bytes) -> tuple[bool, bytes | None]:
        with self._lock:
            hit = self._cache.get(name)
            if hit is None:
                return False, None
            if hit[0] < time.monotonic():
                del self._cache[name]
                return False, None
            self._cache.move_to_end(name)
            return True, hit[1]

    def _store(self, name: bytes, value: bytes | None, ttl: float) -> None:
        with self._lock:
            self._cache[name] = (time.monotonic() + ttl, value)
            self._cache.move_to_end(name)
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)

    def __call__(self, name: bytes, timeout: int = 5) -> bytes | None:
        import dns.exception
        import dns.resolver

        found, value = self._cached(name)
        if found:
            return value
        if time.monotonic() < self._skip_until:
            return None
        self.lookups += 1
        try:
            answer = self._resolver.resolve(name.decode("ascii", "replace"), "TXT", raise_on_no_answer=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoNameservers, dns.resolver.NoAnswer):
            self._timeouts = 0
            self._store(name, None, NEGATIVE_TTL)
            return None
        except (dns.exception.Timeout, dns.resolver.LifetimeTimeout, OSError):
            self._timeouts += 1
            if self._timeouts >= BREAKER_AFTER:
                self._skip_until = time.monotonic() + BREAKER_SECONDS
                self._timeouts = 0
            self._store(name, None, FAILED_TTL)
            return None
        except Exception:  # a malformed name or answer: no key
            self._store(name, None, NEGATIVE_TTL)
            return None
        self._timeouts = 0
        rrset = answer.rrset
        if rrset is None or not len(rrset):
            self._store(name, None, NEGATIVE_TTL)
            return None
        value = b"".join(rrset[0].strings)  # type: ignore[attr-defined]
        self._store(name, value, min(float(rrset.ttl or 0) or MAX_TTL, MAX_TTL))
        return value


_resolvers: dict[tuple[tuple[str, ...], float], TxtResolver] = {}
_resolvers_lock = threading.Lock()


def resolver_for(servers: Sequence[str], timeout: float) -> TxtResolver:
    """One resolver (and cache) per configuration in each process."""
    key = (tuple(servers), float(timeout))
    with _resolvers_lock:
        if key not in _resolvers:
            _resolvers[key] = TxtResolver(servers, timeout)
        return _resolvers[key]
