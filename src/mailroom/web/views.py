from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils.translation import gettext as _

from mailroom.accounts.access import mailboxes_for_user
from mailroom.conversations.access import messages_for_user
from mailroom.conversations.selectors import NO_PROGRESS, folder_progress, message_warnings
from mailroom.mailboxes.models import Mailbox


def healthz(request: HttpRequest) -> JsonResponse:
    with connection.cursor() as cur:
        cur.execute("SELECT 1")
    return JsonResponse({"status": "ok"})


def _mailboxes(request: HttpRequest) -> list[Mailbox]:
    """The user's mailboxes with their folders, each folder carrying ``progress`` (linked and
    quarantined counts), all folders' counts in one query."""
    mailboxes = list(mailboxes_for_user(request.user).prefetch_related("folders").order_by("id"))
    progress = folder_progress(mailbox_ids=[mb.pk for mb in mailboxes])
    for mb in mailboxes:
        for f in mb.folders.all():
            f.progress = progress.get(f.pk, NO_PROGRESS)  # type: ignore[attr-defined]
    return mailboxes


@login_required
def home(request: HttpRequest) -> HttpResponse:
    recent = list(
        messages_for_user(request.user)
        .order_by("-date", "-id")
        .only("id", "subject", "from_address", "from_name", "date", "direction", "thread_id", "routing")[:25]
    )
    labels = _sender_labels()
    for m in recent:
        # Who sent it, as the resolver found (the message's first warning; no Reply-To check here).
        codes = [w.code for w in message_warnings(m, participants=[])]
        m.sender_warning = labels.get(codes[0], "") if codes else ""  # type: ignore[attr-defined]
    return render(request, "web/home.html", {"mailboxes": _mailboxes(request), "recent": recent})


def _sender_labels() -> dict[str, str]:
    return {
        "suspicious": _("claims one of our addresses, not authenticated"),
        "unverified": _("held for review: sender not verified"),
        "unauthenticated": _("sender not authenticated"),
    }


@login_required
def mailbox_status(request: HttpRequest) -> HttpResponse:
    """The mailbox table alone: the home page refreshes it with htmx while mail syncs."""
    return render(request, "web/_mailboxes.html", {"mailboxes": _mailboxes(request)})
