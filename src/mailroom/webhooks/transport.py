"""POSTing webhooks under the SSRF guard.

https only; the host's addresses (``core.netguard.resolve``, injectable in tests) must all be public
(no loopback, private, link-local, shared, multicast, reserved or metadata address), checked before
connecting, and the connected socket's peer is checked again; the socket connects to the vetted
address, never to a second resolution. Redirects are not followed (a 3xx is a failed attempt).
``MAILROOM_WEBHOOK_ALLOW_HOSTS`` lists host names, addresses or networks that may be reached although
they are not public, and over plain http too. A connection is kept open for the next delivery of the
same endpoint while the receiver keeps it alive."""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
from dataclasses import dataclass

from django.conf import settings

from mailroom.core import netguard
from mailroom.core.netguard import BlockedURL, address_allowed, ip_of, resolve, url_parts

MAX_RESPONSE = 64 * 1024
EXCERPT = 1000
USER_AGENT = "Mailroom-Webhooks/1"


@dataclass(frozen=True, slots=True)
class Target(netguard.Target):
    """netguard's vetted target, and whether MAILROOM_WEBHOOK_ALLOW_HOSTS let it through."""

    allowlisted: bool


def _allow_entries() -> list[str]:
    return [str(e).strip().lower() for e in getattr(settings, "MAILROOM_WEBHOOK_ALLOW_HOSTS", []) if str(e).strip()]


def _address_listed(address: str, entries: list[str]) -> bool:
    ip = ip_of(address)
    if ip is None:
        return False
    for entry in entries:
        try:
            if ip in ipaddress.ip_network(entry.strip("[]"), strict=False):
                return True
        except ValueError:
            continue
    return False


def _public(address: str) -> bool:
    """A public address: ``netguard.address_allowed`` without its loopback switch (OAuth2's)."""
    ip = ip_of(address)
    return ip is not None and not ip.is_loopback and address_allowed(str(ip))


def address_ok(address: str, *, host_listed: bool) -> bool:
    return host_listed or _public(address) or _address_listed(address, _allow_entries())


def check_url(url: str, *, resolve_host: bool = True) -> Target:
    """Parse and vet a webhook URL; :class:`BlockedURL` says why it is refused (safe to show).
    ``resolve_host=False`` checks the form only (the API at creation: a name may not resolve yet)."""
    form = url_parts(url, scheme_error="the URL must be https://host/...", fragment=False)
    scheme, host, port = form.scheme, form.host, form.port
    entries = _allow_entries()
    host_listed = host in entries or host.strip("[]") in entries
    literal = host.strip("[]")
    try:
        ipaddress.ip_address(literal)
        is_literal = True
    except ValueError:
        is_literal = False
    if not resolve_host:
        addresses: tuple[str, ...] = (literal,) if is_literal else ()
    else:
        try:
            addresses = (literal,) if is_literal else tuple(resolve(host, port))
        except (OSError, UnicodeError) as exc:
            raise BlockedURL(f"cannot resolve {host}") from exc
        if not addresses:
            raise BlockedURL(f"cannot resolve {host}")
    for address in addresses:
        if not address_ok(address, host_listed=host_listed):
            raise BlockedURL(f"{host} resolves to a loopback, private, link-local or reserved address "
                             "(allow it with MAILROOM_WEBHOOK_ALLOW_HOSTS)")
    listed = host_listed or (bool(addresses) and all(_address_listed(a, entries) for a in addresses))
    if scheme == "http" and not listed:
        raise BlockedURL("only https:// URLs are allowed (plain http only to hosts in MAILROOM_WEBHOOK_ALLOW_HOSTS)")
    return Target(scheme, host, port, form.path, addresses, listed)


@dataclass(frozen=True, slots=True)
class Outcome:
    status: int | None
    excerpt: str
    error: str
    duration_ms: int

    @property
    def success(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


class Session:
    """POSTs to one endpoint URL, keeping the vetted connection between requests while it lasts."""

    def __init__(self, url: str, *, timeout: float) -> None:
        self.url = url
        self.timeout = timeout
        self._target: Target | None = None
        self._conn: http.client.HTTPConnection | None = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connect(self) -> http.client.HTTPConnection:
        target = self._target = check_url(self.url)
        sock: socket.socket | None = None
        last: OSError | None = None
        for address in target.addresses:
            try:
                sock = socket.create_connection((address, target.port), timeout=self.timeout)
                break
            except OSError as exc:
                last = exc
        if sock is None:
            raise last or OSError("no address to connect to")
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            peer = str(sock.getpeername()[0])
            if not address_ok(peer, host_listed=target.allowlisted and peer in target.addresses):
                raise BlockedURL(f"{target.host} connected to a loopback, private or reserved address")
            if target.scheme == "https":
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=target.host)
        except BaseException:
            sock.close()
            raise
        conn = http.client.HTTPConnection(target.host, target.port, timeout=self.timeout)
        conn.sock = sock  # connected and vetted: HTTPConnection does not connect again
        return conn

    def post(self, body: bytes, headers: dict[str, str]) -> Outcome:
        started = time.monotonic()

        def done(status: int | None, excerpt: str = "", error: str = "") -> Outcome:
            return Outcome(status, excerpt[:EXCERPT], error[:500], round((time.monotonic() - started) * 1000))

        reused = self._conn is not None
        try:
            conn = self._conn or self._connect()
            self._conn = conn
            target = self._target
            assert target is not None
            host = target.host if target.port in (80, 443) else f"{target.host}:{target.port}"
            try:
                conn.request("POST", target.path, body=body, headers={
                    "Host": host, "Content-Type": "application/json", "User-Agent": USER_AGENT, **headers})
                resp = conn.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                if not reused:
                    raise
                # The kept connection was closed by the receiver meanwhile: once more on a new one.
                self.close()
                conn = self._conn = self._connect()
                conn.request("POST", target.path, body=body, headers={
                    "Host": host, "Content-Type": "application/json", "User-Agent": USER_AGENT, **headers})
                resp = conn.getresponse()
            data = resp.read(MAX_RESPONSE + 1)
            if len(data) > MAX_RESPONSE or resp.will_close:
                self.close()
            excerpt = data[:EXCERPT].decode("utf-8", "replace")
            if 300 <= resp.status < 400:
                return done(resp.status, excerpt, "redirect not followed")
            return done(resp.status, excerpt)
        except BlockedURL as exc:
            self.close()
            return done(None, error=f"refused: {exc}")
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            return done(None, error=f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
