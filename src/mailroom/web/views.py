from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

from mailroom.accounts.access import mailboxes_for_user


def healthz(request: HttpRequest) -> JsonResponse:
    with connection.cursor() as cur:
        cur.execute("SELECT 1")
    return JsonResponse({"status": "ok"})


@login_required
def home(request: HttpRequest) -> HttpResponse:
    mailboxes = mailboxes_for_user(request.user).prefetch_related("folders").order_by("id")
    return render(request, "web/home.html", {"mailboxes": mailboxes})
