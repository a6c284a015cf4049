from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils.translation import gettext as _

from mailroom.accounts.access import mailboxes_for_user
from mailroom.conversations.access import messages_for_user


def healthz(request: HttpRequest) -> JsonResponse:
    with connection.cursor() as cur:
        cur.execute("SELECT 1")
    return JsonResponse({"status": "ok"})


def _mailboxes(request: HttpRequest) -> object:
    return mailboxes_for_user(request.user).prefetch_related("folders").order_by("id")


@login_required
def home(request: HttpRequest) -> HttpResponse:
    recent = list(
        messages_for_user(request.user)
        .order_by("-date", "-id")
        .only("id", "subject", "from_address", "from_name", "date", "direction", "thread_id", "routing")[:25]
    )
    for m in recent:
        m.sender_warning = _sender_warning(m.routing)  # type: ignore[attr-defined]
    return render(request, "web/home.html", {"mailboxes": _mailboxes(request), "recent": recent})


def _sender_warning(routing: dict[str, object] | None) -> str:
    """Who sent it, as the resolver found (docs/architecture.md, "Who sent it")."""
    thread = (routing or {}).get("thread")
    flags = set(thread.get("flags") or ()) if isinstance(thread, dict) else set()
    if "suspicious" in flags:
        return _("claims one of our addresses, not authenticated")
    if "unverified" in flags:
        return _("held for review: sender not verified")
    if "unauthenticated" in flags:
        return _("sender not authenticated")
    return ""


@login_required
def mailbox_status(request: HttpRequest) -> HttpResponse:
    """The mailbox table alone: the home page refreshes it with htmx while mail syncs."""
    return render(request, "web/_mailboxes.html", {"mailboxes": _mailboxes(request)})
