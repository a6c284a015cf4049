"""Writes on CRM objects: contacts (several addresses), companies (several domains), deals, the
contact-creation ignore list. Uniqueness lives in DB constraints; a clash is a Conflict."""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError, transaction

from mailroom.conversations.models import MessageContact
from mailroom.core.errors import Conflict, InvalidInput
from mailroom.core.text import check_text
from mailroom.crm.models import (
    Company,
    CompanyDomain,
    Contact,
    ContactEmail,
    Deal,
    IgnoreEntry,
    validate_amount,
)
from mailroom.parsing.headers import normalize_address
from mailroom.routing.addresses import canonical_address

_UNSET: Any = object()


def _addresses(emails: Iterable[str]) -> list[str]:
    out: list[str] = []
    for e in emails:
        a = normalize_address(check_text(e, "emails"))
        if not a:
            raise InvalidInput(f"{e!r} is not an email address", field="emails")
        if a not in out:
            out.append(a)
    return out


def _domains(domains: Iterable[str], field: str = "domains") -> list[str]:
    out: list[str] = []
    for d in domains:
        d = check_text(d, field).strip().lower().strip(".")
        if d.startswith("@"):
            d = d[1:]
        if not d or "." not in d or " " in d or "@" in d:
            raise InvalidInput(f"{d!r} is not a domain", field=field)
        if d not in out:
            out.append(d)
    return out


def _check_team(team_id: int, *objs: Any) -> None:
    for o in objs:
        if o is not None and o.team_id != team_id:
            raise InvalidInput(f"{type(o).__name__.lower()} {o.pk} belongs to another team")


def _set_emails(contact: Contact, addresses: list[str]) -> None:
    ContactEmail.objects.filter(contact=contact).exclude(address__in=addresses).delete()
    have = set(ContactEmail.objects.filter(contact=contact).values_list("address", flat=True))
    try:
        with transaction.atomic():
            ContactEmail.objects.bulk_create(
                [
                    ContactEmail(
                        contact=contact, team_id=contact.team_id, address=a, canonical=canonical_address(a)
                    )
                    for a in addresses
                    if a not in have
                ]
            )
    except IntegrityError as exc:
        owner = (
            ContactEmail.objects.filter(team_id=contact.team_id, address__in=addresses)
            .exclude(contact=contact)
            .first()
        )
        raise Conflict(
            f"{owner.address if owner else 'an address'} already belongs to contact {owner.contact_id if owner else '?'}",
            field="emails",
        ) from exc


@transaction.atomic
def contact_create(
    *,
    team_id: int,
    name: str = "",
    emails: Iterable[str] = (),
    phone: str = "",
    company: Company | None = None,
    owner: Any = None,
) -> Contact:
    _check_team(team_id, company)
    check_text(name, "name")
    check_text(phone, "phone")
    contact = Contact.objects.create(
        team_id=team_id, name=name.strip()[:300], phone=phone.strip()[:50], company=company, owner=owner
    )
    _set_emails(contact, _addresses(emails))
    return contact


@transaction.atomic
def contact_update(
    *,
    contact: Contact,
    name: str | None = None,
    emails: Iterable[str] | None = None,
    phone: str | None = None,
    company: Company | None = _UNSET,
    owner: Any = _UNSET,
) -> Contact:
    fields: list[str] = []
    if name is not None:
        contact.name = check_text(name, "name").strip()[:300]
        fields.append("name")
    if phone is not None:
        contact.phone = check_text(phone, "phone").strip()[:50]
        fields.append("phone")
    if company is not _UNSET:
        _check_team(contact.team_id, company)
        contact.company = company
        fields.append("company")
        # The company timeline follows the contact.
        MessageContact.objects.filter(contact=contact).update(company=company)
    if owner is not _UNSET:
        contact.owner = owner
        fields.append("owner")
    if fields:
        contact.save(update_fields=fields)
    if emails is not None:
        _set_emails(contact, _addresses(emails))
    return contact


@transaction.atomic
def contact_delete(*, contact: Contact) -> None:
    contact.delete()


def _set_domains(company: Company, domains: list[str]) -> None:
    CompanyDomain.objects.filter(company=company).exclude(domain__in=domains).delete()
    have = set(CompanyDomain.objects.filter(company=company).values_list("domain", flat=True))
    try:
        with transaction.atomic():
            CompanyDomain.objects.bulk_create(
                [
                    CompanyDomain(company=company, team_id=company.team_id, domain=d)
                    for d in domains
                    if d not in have
                ]
            )
    except IntegrityError as exc:
        owner = (
            CompanyDomain.objects.filter(team_id=company.team_id, domain__in=domains)
            .exclude(company=company)
            .first()
        )
        raise Conflict(
            f"domain {owner.domain if owner else '?'} already belongs to company {owner.company_id if owner else '?'}",
            field="domains",
        ) from exc


@transaction.atomic
def company_create(*, team_id: int, name: str, domains: Iterable[str] = ()) -> Company:
    check_text(name, "name")
    if not name.strip():
        raise InvalidInput("a company needs a name", field="name")
    company = Company.objects.create(team_id=team_id, name=name.strip()[:300])
    _set_domains(company, _domains(domains))
    return company


@transaction.atomic
def company_update(
    *, company: Company, name: str | None = None, domains: Iterable[str] | None = None
) -> Company:
    if name is not None:
        if not check_text(name, "name").strip():
            raise InvalidInput("a company needs a name", field="name")
        company.name = name.strip()[:300]
        company.save(update_fields=["name"])
    if domains is not None:
        _set_domains(company, _domains(domains))
    return company


@transaction.atomic
def company_delete(*, company: Company) -> None:
    company.delete()


def _amount(amount: Decimal | None) -> Decimal | None:
    try:
        return validate_amount(amount)
    except DjangoValidationError as exc:
        raise InvalidInput("amount: " + " ".join(exc.messages), field="amount") from exc


def _status(status: str) -> str:
    check_text(status, "status")
    if status not in Deal.Status.values:
        raise InvalidInput(f"status must be one of {', '.join(Deal.Status.values)}", field="status")
    return status


@transaction.atomic
def deal_create(
    *,
    team_id: int,
    title: str,
    contact: Contact | None = None,
    company: Company | None = None,
    amount: Decimal | None = None,
    stage: str = "",
    status: str = Deal.Status.OPEN,
    owner: Any = None,
) -> Deal:
    if not check_text(title, "title").strip():
        raise InvalidInput("a deal needs a title", field="title")
    check_text(stage, "stage")
    _check_team(team_id, contact, company)
    return Deal.objects.create(
        team_id=team_id,
        title=title.strip()[:300],
        contact=contact,
        company=company,
        amount=_amount(amount),
        stage=stage[:100],
        status=_status(status),
        owner=owner,
    )


@transaction.atomic
def deal_update(
    *,
    deal: Deal,
    title: str | None = None,
    contact: Contact | None = _UNSET,
    company: Company | None = _UNSET,
    amount: Decimal | None = _UNSET,
    stage: str | None = None,
    status: str | None = None,
    owner: Any = _UNSET,
) -> Deal:
    fields: list[str] = []
    if title is not None:
        if not check_text(title, "title").strip():
            raise InvalidInput("a deal needs a title", field="title")
        deal.title = title.strip()[:300]
        fields.append("title")
    for name, value in (("contact", contact), ("company", company)):
        if value is not _UNSET:
            _check_team(deal.team_id, value)
            setattr(deal, name, value)
            fields.append(name)
    if amount is not _UNSET:
        deal.amount = _amount(amount)
        fields.append("amount")
    if owner is not _UNSET:
        deal.owner = owner
        fields.append("owner")
    if stage is not None:
        deal.stage = check_text(stage, "stage")[:100]
        fields.append("stage")
    if status is not None:
        deal.status = _status(status)
        fields.append("status")
    if fields:
        deal.save(update_fields=fields)
    return deal


@transaction.atomic
def deal_delete(*, deal: Deal) -> None:
    deal.delete()


@transaction.atomic
def ignore_entry_create(*, team_id: int, kind: str, value: str, note: str = "") -> IgnoreEntry:
    check_text(kind, "kind")
    check_text(value, "value")
    check_text(note, "note", multiline=True)
    if kind == IgnoreEntry.Kind.ADDRESS:
        addr = normalize_address(value)
        if not addr:
            raise InvalidInput(f"{value!r} is not an email address", field="value")
        value = canonical_address(addr)
    elif kind == IgnoreEntry.Kind.DOMAIN:
        value = _domains([value], "value")[0]
    else:
        raise InvalidInput("kind must be 'address' or 'domain'", field="kind")
    entry, created = IgnoreEntry.objects.get_or_create(
        team_id=team_id, kind=kind, value=value, defaults={"note": note[:300]}
    )
    if not created:
        raise Conflict(f"{kind} {value} is already on the ignore list", field="value")
    return entry


@transaction.atomic
def ignore_entry_delete(*, entry: IgnoreEntry) -> None:
    entry.delete()
