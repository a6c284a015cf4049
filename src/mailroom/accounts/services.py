from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from mailroom.accounts.models import ApiToken, Membership, Team
from mailroom.core.text import check_text


def team_get_or_create(*, name: str) -> Team:
    check_text(name, "team")
    team, _ = Team.objects.get_or_create(name=name)
    return team


@transaction.atomic
def user_create(
    *, username: str, password: str | None, email: str = "", team_name: str | None = None, superuser: bool = False,
    team_admin: bool = False,
) -> Any:
    for value, field in ((username, "username"), (email, "email"), (team_name or "", "team"), (password or "", "password")):
        check_text(value, field)
    User = get_user_model()
    if User.objects.filter(username=username).exists():
        from mailroom.core.errors import Conflict

        raise Conflict(f"user {username!r} already exists")
    if superuser:
        user = User.objects.create_superuser(username=username, email=email, password=password)
    else:
        user = User.objects.create_user(username=username, email=email, password=password)
    team = team_get_or_create(name=team_name or "Default")
    Membership.objects.create(
        user=user, team=team, role=Membership.Role.ADMIN if superuser or team_admin else Membership.Role.MEMBER
    )
    return user


def token_create(*, user: Any, name: str = "") -> str:
    """Create an API token and return it in clear (shown once)."""
    check_text(name, "name")
    token = ApiToken.new_token()
    ApiToken.objects.create(user=user, name=name, token_hash=ApiToken.hash(token), hint=token[:8])
    return token


def token_authenticate(token: str) -> Any | None:
    row = (
        ApiToken.objects.select_related("user")
        .filter(token_hash=ApiToken.hash(token), revoked_at__isnull=True, user__is_active=True)
        .first()
    )
    if row is None:
        return None
    now = timezone.now()
    if row.last_used_at is None or (now - row.last_used_at).total_seconds() > 60:
        ApiToken.objects.filter(pk=row.pk).update(last_used_at=now)
    return row.user
