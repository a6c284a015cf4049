"""Server-side requests to URLs that users configure (OAuth2 token endpoints): https only, never to
loopback, private, link-local, shared or metadata addresses, checked on the resolved addresses before
connecting and again on the connected socket; no redirects followed; the answer read with a cap.

``MAILROOM_ALLOW_LOOPBACK_HTTP`` (tests and local development only) lets plain http reach loopback.
The resolver can be injected (tests use it; they never resolve a real name)."""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from django.conf import settings

Resolver = Callable[[str, int], Sequence[str]]
MAX_RESPONSE = 64 * 1024


class BlockedURL(ValueError):
    """The URL may not be requested; the message says why (safe to show)."""


def _system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


_resolver: Resolver = _system_resolver


def set_resolver(resolver: Resolver | None) -> None:
    """Replace the resolver (tests); None restores the system's."""
    global _resolver
    _resolver = resolver or _system_resolver


def resolve(host: str, port: int) -> list[str]:
    """The addresses of ``host`` through the configured resolver (injectable: :func:`set_resolver`)."""
    return list(_resolver(host, port))


def _loopback_allowed() -> bool:
    return bool(getattr(settings, "MAILROOM_ALLOW_LOOPBACK_HTTP", False))


def ip_of(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An address as the network sees it: without an IPv6 zone, an IPv4-mapped IPv6 address as its
    IPv4 one; None for what is no IP address."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def address_allowed(address: str) -> bool:
    """Whether a request may go to this IP address."""
    ip = ip_of(address)
    if ip is None:
        return False
    if ip.is_loopback:
        return _loopback_allowed()
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_link_local or ip.is_private)


@dataclass(frozen=True, slots=True)
class Target:
    scheme: str
    host: str
    port: int
    path: str
    addresses: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class UrlParts:
    scheme: str  # "https" or "http" (lower-cased)
    host: str  # lower-cased, an IPv6 literal without its brackets
    port: int
    path: str  # with the query, "/" at least


def url_parts(url: str, *, scheme_error: str = "only https:// URLs are allowed", fragment: bool = True) -> UrlParts:
    """The form of a URL a server-side request may go to (nothing resolved yet): printable ASCII
    only, http(s) with a host, no credentials, a port in range, and (unless ``fragment``) no
    #fragment. :class:`BlockedURL` says what is wrong (``scheme_error`` for a scheme or a host)."""
    if any(ch in url for ch in "\r\n\0\t ") or not url.isascii():
        raise BlockedURL("the URL contains spaces, control or non-ASCII characters")
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if scheme not in ("https", "http") or not host:
        raise BlockedURL(scheme_error)
    if parts.username or parts.password:
        raise BlockedURL("the URL must not carry credentials")
    if parts.fragment and not fragment:
        raise BlockedURL("the URL must not have a #fragment")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError as exc:
        raise BlockedURL("the URL's port is not a number between 1 and 65535") from exc
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return UrlParts(scheme, host, port, path)


def check_url(url: str) -> Target:
    """Parse and vet ``url``; :class:`BlockedURL` says why it is refused."""
    form = url_parts(url)
    scheme, host, port = form.scheme, form.host, form.port
    try:
        addresses = tuple(_resolver(host, port))
    except (OSError, UnicodeError) as exc:
        raise BlockedURL(f"cannot resolve {host}") from exc
    if not addresses:
        raise BlockedURL(f"cannot resolve {host}")
    for address in addresses:
        if not address_allowed(address):
            raise BlockedURL(f"{host} resolves to a loopback, private or reserved address")
    if scheme == "http" and not (_loopback_allowed() and all(ipaddress.ip_address(a).is_loopback for a in addresses)):
        raise BlockedURL("only https:// URLs are allowed")
    return Target(scheme, host, port, form.path, addresses)


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes


def post_form(url: str, body: bytes, *, timeout: float = 20.0) -> Response:
    """POST ``body`` (form-encoded) to ``url`` under the rules above. Redirects are not followed:
    a 3xx is returned as it is. Raises :class:`BlockedURL` or ``OSError``."""
    target = check_url(url)
    address = target.addresses[0]
    sock = socket.create_connection((address, target.port), timeout=timeout)
    try:
        peer = sock.getpeername()[0]
        if not address_allowed(str(peer)):
            raise BlockedURL(f"{target.host} connected to a loopback, private or reserved address")
        if target.scheme == "https":
            ctx = ssl.create_default_context()
            sock = ctx.wrap_socket(sock, server_hostname=target.host)
        conn = http.client.HTTPConnection(target.host, target.port, timeout=timeout)
        conn.sock = sock  # already connected (and vetted): HTTPConnection does not connect again
        conn.request(
            "POST", target.path, body=body,
            headers={"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json",
                     "Host": target.host if target.port in (80, 443) else f"{target.host}:{target.port}"},
        )
        resp = conn.getresponse()
        data = resp.read(MAX_RESPONSE + 1)
        if len(data) > MAX_RESPONSE:
            raise OSError("the answer is larger than 64 KiB")
        return Response(resp.status, data)
    finally:
        sock.close()
