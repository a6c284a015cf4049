from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import DecimalValidator
from django.db import models


class Company(models.Model):
    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE, related_name="companies")
    name = models.CharField(max_length=300)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "companies"
        indexes = [models.Index(fields=["team", "name"], name="company_team_name")]

    def __str__(self) -> str:
        return self.name


class CompanyDomain(models.Model):
    company = models.ForeignKey(Company, on_delete=models.CASCADE, related_name="domains")
    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE, related_name="+")
    domain = models.CharField(max_length=255)  # lower-case

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["team", "domain"], name="uniq_company_domain_per_team")
        ]

    def __str__(self) -> str:
        return self.domain


class Contact(models.Model):
    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE, related_name="contacts")
    name = models.CharField(max_length=300, blank=True)
    phone = models.CharField(max_length=50, blank=True)
    company = models.ForeignKey(
        Company, null=True, blank=True, on_delete=models.SET_NULL, related_name="contacts"
    )
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="owned_contacts",
    )
    created_automatically = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["team", "name"], name="contact_team_name")]

    def __str__(self) -> str:
        return self.name or f"contact {self.pk}"


class ContactEmail(models.Model):
    contact = models.ForeignKey(Contact, on_delete=models.CASCADE, related_name="emails")
    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE, related_name="+")
    address = models.CharField(max_length=320)  # lower-case, as written
    canonical = models.CharField(max_length=320, db_index=True)  # provider-normalised (gmail dots, +tags)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["team", "address"], name="uniq_contact_email_per_team")
        ]
        indexes = [models.Index(fields=["team", "canonical"], name="contact_email_canonical")]

    def __str__(self) -> str:
        return self.address


AMOUNT_MAX_DIGITS = 14
AMOUNT_DECIMAL_PLACES = 2


def validate_amount(value: Decimal | None) -> Decimal | None:
    """A deal amount the column can hold: finite, at most AMOUNT_MAX_DIGITS digits of which at most
    AMOUNT_DECIMAL_PLACES after the point. Raises django's ValidationError otherwise (SQLite would store
    1e400 or 40 digits as text or a float that no read can turn back into a Decimal)."""
    if value is None:
        return None
    if not isinstance(value, Decimal):
        raise ValidationError("amount must be a decimal number", code="invalid")
    if not value.is_finite():
        raise ValidationError("amount must be a finite number", code="invalid")
    DecimalValidator(AMOUNT_MAX_DIGITS, AMOUNT_DECIMAL_PLACES)(value)
    return value


class Deal(models.Model):
    class Status(models.TextChoices):
        OPEN = "open", "Open"
        WON = "won", "Won"
        LOST = "lost", "Lost"

    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE, related_name="deals")
    title = models.CharField(max_length=300)
    contact = models.ForeignKey(
        Contact, null=True, blank=True, on_delete=models.SET_NULL, related_name="deals"
    )
    company = models.ForeignKey(
        Company, null=True, blank=True, on_delete=models.SET_NULL, related_name="deals"
    )
    amount = models.DecimalField(
        max_digits=AMOUNT_MAX_DIGITS,
        decimal_places=AMOUNT_DECIMAL_PLACES,
        null=True,
        blank=True,
    )  # full_clean (the admin) checks digits and places; the services call validate_amount
    stage = models.CharField(max_length=100, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.OPEN)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="owned_deals"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.title


class IgnoreEntry(models.Model):
    """Addresses and domains never turned into contacts (a domain covers its subdomains)."""

    class Kind(models.TextChoices):
        ADDRESS = "address", "Address"
        DOMAIN = "domain", "Domain"

    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE, related_name="ignore_entries")
    kind = models.CharField(max_length=10, choices=Kind.choices)
    value = models.CharField(max_length=320)  # lower-case; addresses canonical
    note = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "ignore entries"
        constraints = [models.UniqueConstraint(fields=["team", "kind", "value"], name="uniq_ignore_entry")]

    def __str__(self) -> str:
        return f"{self.kind}: {self.value}"
