"""Fixtures shared by every test package."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from tests.factories import TeamFactory, UserFactory


@pytest.fixture
def team(db: Any) -> Any:
    return TeamFactory()


@pytest.fixture
def user(team: Any) -> Any:
    return UserFactory(team=team)


@pytest.fixture
def api_client(user: Any) -> Client:
    """A Django test client that sends the user's bearer token."""
    from mailroom.accounts.services import token_create

    token = token_create(user=user, name="test")
    return Client(headers={"Authorization": f"Bearer {token}"})


@pytest.fixture
def other_team_client(db: Any) -> Client:
    """A client of a user in another team: must see none of `team`'s objects."""
    from mailroom.accounts.services import token_create

    other = UserFactory(team=TeamFactory())
    return Client(headers={"Authorization": f"Bearer {token_create(user=other)}"})


@pytest.fixture
def admin_api_client(user: Any, team: Any) -> Client:
    """``api_client``'s user made an admin of ``team`` (mailbox settings are team-admin only)."""
    from mailroom.accounts.models import Membership
    from mailroom.accounts.services import token_create

    Membership.objects.filter(user=user, team=team).update(role=Membership.Role.ADMIN)
    return Client(headers={"Authorization": f"Bearer {token_create(user=user, name='admin')}"})
