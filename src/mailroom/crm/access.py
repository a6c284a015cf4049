"""Access helpers for CRM objects: the only door for views; a denial is a 404."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from mailroom.accounts.access import scope_to_user
from mailroom.core.errors import NotFound
from mailroom.crm.models import Company, Contact, Deal, IgnoreEntry


def contacts_for_user(user: Any) -> QuerySet[Contact]:
    return scope_to_user(Contact.objects.all(), user)


def companies_for_user(user: Any) -> QuerySet[Company]:
    return scope_to_user(Company.objects.all(), user)


def deals_for_user(user: Any) -> QuerySet[Deal]:
    return scope_to_user(Deal.objects.all(), user)


def access_contact_for_user(user: Any, contact_id: int) -> Contact:
    obj = contacts_for_user(user).filter(pk=contact_id).first()
    if obj is None:
        raise NotFound(f"contact {contact_id} not found")
    return obj


def access_company_for_user(user: Any, company_id: int) -> Company:
    obj = companies_for_user(user).filter(pk=company_id).first()
    if obj is None:
        raise NotFound(f"company {company_id} not found")
    return obj


def access_deal_for_user(user: Any, deal_id: int) -> Deal:
    obj = deals_for_user(user).filter(pk=deal_id).first()
    if obj is None:
        raise NotFound(f"deal {deal_id} not found")
    return obj


def access_ignore_entry_for_user(user: Any, entry_id: int) -> IgnoreEntry:
    obj = scope_to_user(IgnoreEntry.objects.all(), user).filter(pk=entry_id).first()
    if obj is None:
        raise NotFound(f"ignore entry {entry_id} not found")
    return obj
