from __future__ import annotations

from typing import Any

import pytest

from mailroom.core.errors import Conflict, InvalidInput
from mailroom.crm import services
from mailroom.crm.models import ContactEmail
from tests.factories import CompanyFactory, TeamFactory

pytestmark = pytest.mark.django_db


def test_contact_emails_are_canonicalised_and_unique(team: Any) -> None:
    c = services.contact_create(team_id=team.pk, name="John", emails=["John.Smith+x@Gmail.com"])
    assert list(ContactEmail.objects.filter(contact=c).values_list("address", "canonical")) == [
        ("john.smith+x@gmail.com", "johnsmith@gmail.com")
    ]
    with pytest.raises(Conflict, match=f"already belongs to contact {c.pk}"):
        services.contact_create(team_id=team.pk, name="Dup", emails=["john.smith+x@gmail.com"])
    # Another team may hold the same address.
    services.contact_create(team_id=TeamFactory().pk, emails=["john.smith+x@gmail.com"])


def test_cross_team_company_is_refused(team: Any) -> None:
    foreign = CompanyFactory(team=TeamFactory())
    with pytest.raises(InvalidInput, match="belongs to another team"):
        services.contact_create(team_id=team.pk, company=foreign)


def test_ignore_entry_normalises(team: Any) -> None:
    assert (
        services.ignore_entry_create(team_id=team.pk, kind="domain", value="@Vendor.Test.").value
        == "vendor.test"
    )
    with pytest.raises(InvalidInput):
        services.ignore_entry_create(team_id=team.pk, kind="planet", value="x")
