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
    create.add_argument("--password", help="password (asked for when omitted on a terminal; random otherwise)")
    create.set_defaults(handler=_user_create)

    token = sub.add_parser("token", help="manage API tokens")
    tsub = token.add_subparsers(dest="token_command", required=True)
    tcreate = tsub.add_parser("create", help="create an API token for USER (printed once)")
    tcreate.add_argument("username")
    tcreate.add_argument("--name", default="cli")
    tcreate.set_defaults(handler=_token_create)


def _user_create(args: argparse.Namespace) -> int:
    setup_django()
    from mailroom.accounts.services import user_create

    password = args.password
    generated = False
    if password is None:
        if sys.stdin.isatty():
            password = getpass.getpass("Password: ")
        else:
            password, generated = secrets.token_urlsafe(12), True
    user = user_create(
        username=args.username, password=password, email=args.email, team_name=args.team, superuser=args.superuser
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
