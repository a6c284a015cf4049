"""Login throttling (django-axes, configured in config/settings.py): whose attempts count together
and what a locked-out login gets.

A lock-out is per user name and client address: 5 failures lock that pair for ``AXES_COOLOFF_TIME``
(the right password is refused too), a success resets the count. The web login and the admin get
their login page with a localised message and status 429; a login under ``/api/`` gets JSON 429
``{"detail": ..., "retry_after": seconds}`` and a ``Retry-After`` header."""

from __future__ import annotations

import ipaddress
import math
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.forms import AuthenticationForm
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

# An IPv6 client holds a whole /64 as a rule: its addresses count as one, or a new address per try
# would escape the lock-out.
_IPV6_PREFIX = 64


def _normalised(address: str) -> str | None:
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network(f"{ip}/{_IPV6_PREFIX}", strict=False).network_address)
    return str(ip)


def client_ip(request: HttpRequest) -> str | None:
    """The client's address (``AXES_CLIENT_IP_CALLABLE``). Behind a proxy (``MAILROOM_BEHIND_PROXY``)
    the last entry of X-Forwarded-For, the one our proxy added (entries before it are whatever the
    client sent); otherwise the connection's address and the header is ignored."""
    if settings.MAILROOM_BEHIND_PROXY:
        hops = [h for h in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if h.strip()]
        if hops and (forwarded := _normalised(hops[-1])) is not None:
            return forwarded
    return _normalised(str(request.META.get("REMOTE_ADDR", "")))


def client_username(request: HttpRequest, credentials: dict[str, Any] | None) -> str | None:
    """The user name attempts are counted under (``AXES_USERNAME_CALLABLE``), cut to what the
    attempts table holds, so an odd one from an API login never fails the database write."""
    field = str(getattr(settings, "AXES_USERNAME_FORM_FIELD", "username"))
    value = credentials.get(field) if credentials else request.POST.get(field)
    if value is None:
        return None
    return str(value).replace("\x00", "")[:255]


def cool_off() -> timedelta:
    value = settings.AXES_COOLOFF_TIME
    return value if isinstance(value, timedelta) else timedelta(minutes=15)


def lockout_response(
    request: HttpRequest, original_response: HttpResponse | None = None, credentials: dict[str, Any] | None = None
) -> HttpResponse:
    """``AXES_LOCKOUT_CALLABLE``: the answer to a login attempt while its user name and address are
    locked out."""
    seconds = math.ceil(cool_off().total_seconds())
    minutes = max(1, math.ceil(seconds / 60))
    if request.path_info.startswith("/api/"):
        response: HttpResponse = JsonResponse(
            {
                "detail": (
                    f"too many failed logins for this user name from this address: try again in {minutes} "
                    "minutes (a successful login resets the count; an admin can clear it under "
                    "Axes > Access attempts in /admin/)"
                ),
                "retry_after": seconds,
            },
            status=429,
        )
    else:
        form = AuthenticationForm(request, initial={"username": client_username(request, credentials) or ""})
        response = render(
            request,
            "web/login.html",
            {"form": form, "locked_out": True, "minutes": minutes, "next": request.POST.get("next", "")},
            status=429,
        )
    response["Retry-After"] = str(seconds)
    return response
