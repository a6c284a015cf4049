"""Every admin page a superuser opens renders (lists and change forms), and secrets never show."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib import admin
from django.test import Client
from django.urls import reverse

from tests.factories import MailboxFactory, MessageFactory, UserFactory

pytestmark = pytest.mark.django_db


def test_admin_pages_render_and_hide_secrets(team: Any) -> None:
    su = UserFactory(is_superuser=True, is_staff=True)
    client = Client()
    client.force_login(su)
    mb = MailboxFactory(team=team, password="very-secret-pass")
    MessageFactory(team=team)
    for model in admin.site._registry:
        meta = model._meta
        resp = client.get(reverse(f"admin:{meta.app_label}_{meta.model_name}_changelist"))
        assert resp.status_code == 200, f"{meta.label} list: {resp.status_code}"
    resp = client.get(reverse("admin:mailboxes_mailbox_change", args=[mb.pk]))
    assert resp.status_code == 200
    assert b"very-secret-pass" not in resp.content and mb.secret_enc.encode() not in resp.content


def test_admin_needs_staff(user: Any) -> None:
    client = Client()
    client.force_login(user)
    resp = client.get(reverse("admin:mailboxes_mailbox_changelist"))
    assert resp.status_code == 302
