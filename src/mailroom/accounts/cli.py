"""`mailroom user create` and `mailroom token create USER`."""

from __future__ import annotations

import argparse
import getpass
import secrets
import sys

from mailroom.cli import setup_django


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    user = sub.add_parser("user", help="manage users")
    usub = user.add_subparsers(dest="user_command", required=True)
    create = usub.add_parser("create", help="create a user (and add him to a team)")
    create.add_argument("username")
    create.add_argument("--email", default="")
    create.add_argument("--team", default="Default", help="team name (created if missing)")
    create.add_argument("--superuser", action="store_true", help="administrator: sees every team, may use /admin")
    create.add_argument("--admin", action="store_true",
                        help="team admin: may connect mailboxes and change their servers, credentials and identity")
    create.add_argument("--password", help="password (asked for when omitted on a terminal; random otherwise)")
    create.set_defaults(handler=_user_create)
    ulist = usub.add_parser("list", help="users, their teams and roles")
    ulist.set_defaults(handler=_user_list)
    setpw = usub.add_parser("set-password", help="set a user's password (asked for on a terminal; random otherwise)")
    setpw.add_argument("username")
    setpw.add_argument("--password")
    setpw.set_defaults(handler=_user_set_password)

    token = sub.add_parser("token", help="manage API tokens")
    tsub = token.add_subparsers(dest="token_command", required=True)
    tcreate = tsub.add_parser("create", help="create an API token for USER (printed once)")
    tcreate.add_argument("username")
    tcreate.add_argument("--name", default="cli")
    tcreate.set_defaults(handler=_token_create)


def _password(given: str | None) -> tuple[str, bool]:
    """The password given, typed on a terminal, or a random one (generated: True, to be printed)."""
    if given is not None:
        return given, False
    if sys.stdin.isatty():
        return getpass.getpass("Password: "), False
    return secrets.token_urlsafe(12), True


def _user_create(args: argparse.Namespace) -> int:
    setup_django()
    from mailroom.accounts.services import user_create

    password, generated = _password(args.password)
    user = user_create(
        username=args.username, password=password, email=args.email, team_name=args.team, superuser=args.superuser,
        team_admin=args.admin,
    )
    print(f"created user {user.username} in team {args.team!r}")
    if generated:
        print(f"password: {password}")
    return 0


def _token_create(args: argparse.Namespace) -> int:
    setup_django()
    from django.contrib.auth import get_user_model

    from mailroom.accounts.services import token_create
    from mailroom.core.errors import NotFound

    user = get_user_model().objects.filter(username=args.username).first()
    if user is None:
        raise NotFound(f"no user {args.username!r}: create one with 'mailroom user create {args.username}'")
    print(token_create(user=user, name=args.name))
    return 0


def _user_list(args: argparse.Namespace) -> int:
    setup_django()
    from django.contrib.auth import get_user_model

    users = list(get_user_model().objects.order_by("username").prefetch_related("memberships__team"))
    print(f"{'user':<24} {'email':<32} teams (role)")
    for user in users:
        teams = ", ".join(f"{m.team.name} ({m.role})" for m in user.memberships.all()) or "-"
        flag = " [superuser]" if user.is_superuser else ""
        flag += "" if user.is_active else " [inactive]"
        print(f"{user.username:<24} {user.email or '-':<32} {teams}{flag}")
    return 0


def _user_set_password(args: argparse.Namespace) -> int:
    setup_django()
    from django.contrib.auth import get_user_model

    from mailroom.core.errors import NotFound

    user = get_user_model().objects.filter(username=args.username).first()
    if user is None:
        raise NotFound(f"no user {args.username!r}: see 'mailroom user list'")
    password, generated = _password(args.password)
    user.set_password(password)
    user.save(update_fields=["password"])
    print(f"password of {user.username} set")
    if generated:
        print(f"password: {password}")
    return 0
