"""The only door to user-visible objects: every API/web lookup goes through these helpers.

A user sees the objects of the teams he belongs to (superusers see all). A denial is a 404, so
that the existence of other teams' objects does not leak.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import QuerySet

from mailroom.accounts.models import Team
from mailroom.core.errors import NotFound, PermissionDenied
from mailroom.mailboxes.models import Mailbox

UserLike = AbstractBaseUser | AnonymousUser


def team_ids_for_user(user: Any) -> list[int] | None:
    """Team ids the user may see; None means all (superuser)."""
    if not getattr(user, "is_authenticated", False):
        return []
    if getattr(user, "is_superuser", False):
        return None
    return list(Team.objects.filter(memberships__user=user).values_list("id", flat=True))


def scope_to_user(qs: QuerySet[Any], user: Any, team_field: str = "team_id") -> QuerySet[Any]:
    ids = team_ids_for_user(user)
    if ids is None:
        return qs
    return qs.filter(**{f"{team_field}__in": ids})


def access_team_for_user(user: Any, team_id: int) -> Team:
    team = scope_to_user(Team.objects.all(), user, "id").filter(id=team_id).first()
    if team is None:
        raise NotFound(f"team {team_id} not found")
    return team


def default_team_for_user(user: Any) -> Team:
    team = scope_to_user(Team.objects.order_by("id"), user, "id").first()
    if team is None:
        raise PermissionDenied("you belong to no team: ask an admin to add you to one")
    return team


def is_team_admin(user: Any, team_id: int) -> bool:
    if getattr(user, "is_superuser", False):
        return True
    from mailroom.accounts.models import Membership

    return Membership.objects.filter(user=user, team_id=team_id, role=Membership.Role.ADMIN).exists()


def require_team_admin(user: Any, team_id: int, what: str = "mailbox settings") -> None:
    """Servers, credentials, relay and identity of a team's mailboxes are its admins' to change."""
    if not is_team_admin(user, team_id):
        raise PermissionDenied(f"{what} can only be changed by a team admin: ask one of your team's admins")


def mailboxes_for_user(user: Any) -> QuerySet[Mailbox]:
    return scope_to_user(Mailbox.objects.all(), user)


def access_mailbox_for_user(user: Any, mailbox_id: int) -> Mailbox:
    mailbox = mailboxes_for_user(user).filter(id=mailbox_id).first()
    if mailbox is None:
        raise NotFound(f"mailbox {mailbox_id} not found")
    return mailbox
