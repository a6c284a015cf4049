from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

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
    recent = (
        messages_for_user(request.user)
        .order_by("-date", "-id")
        .only("id", "subject", "from_address", "from_name", "date", "direction", "thread_id")[:25]
    )
    return render(request, "web/home.html", {"mailboxes": _mailboxes(request), "recent": recent})


@login_required
def mailbox_status(request: HttpRequest) -> HttpResponse:
    """The mailbox table alone: the home page refreshes it with htmx while mail syncs."""
    return render(request, "web/_mailboxes.html", {"mailboxes": _mailboxes(request)})
