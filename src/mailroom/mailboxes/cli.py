"""`mailroom mailbox add|list|test|remove`."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from typing import Any

from mailroom.cli import setup_django


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    mb = sub.add_parser("mailbox", help="connect and inspect mailboxes")
    msub = mb.add_subparsers(dest="mailbox_command", required=True)

    add = msub.add_parser("add", help="connect a mailbox")
    add.add_argument("email")
    add.add_argument("--name", default="")
    add.add_argument("--team", default="Default")
    add.add_argument("--provider", default="generic", choices=["generic", "gmail", "microsoft", "yandex", "mailru"])
    add.add_argument("--imap-host")
    add.add_argument("--imap-port", type=int)
    add.add_argument("--imap-security", choices=["ssl", "starttls", "plain"])
    add.add_argument("--smtp-host")
    add.add_argument("--smtp-port", type=int)
    add.add_argument("--smtp-security", choices=["ssl", "starttls", "plain"])
    add.add_argument("--username", help="login name (default: the address)")
    add.add_argument("--password", help="password or app password (default: $MAILROOM_MAILBOX_PASSWORD or asked)")
    add.add_argument("--roles", default="inbox,sent", help="folder roles to sync, e.g. inbox,sent,archive")
    add.add_argument("--no-verify-tls", action="store_true", help="accept self-signed certificates")
    add.add_argument("--no-test", action="store_true", help="don't test the connection first")
    add.set_defaults(handler=_add)

    ls = msub.add_parser("list", help="list mailboxes with health and per-folder progress")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(handler=_list)

    test = msub.add_parser("test", help="log in to IMAP and SMTP and report, or say what is wrong")
    test.add_argument("mailbox", help="mailbox id or address")
    test.add_argument("--json", action="store_true")
    test.set_defaults(handler=_test)

    rm = msub.add_parser("remove", help="disconnect a mailbox (its stored mail is deleted)")
    rm.add_argument("mailbox", help="mailbox id or address")
    rm.set_defaults(handler=_remove)


def find_mailbox(ref: str):  # type: ignore[no-untyped-def]
    from mailroom.core.errors import NotFound
    from mailroom.mailboxes.models import Mailbox

    qs = Mailbox.objects.filter(pk=int(ref)) if ref.isdigit() else Mailbox.objects.filter(email=ref.lower())
    mb = qs.first()
    if mb is None:
        raise NotFound(f"no mailbox {ref!r} (see 'mailroom mailbox list')")
    return mb


def _add(args: argparse.Namespace) -> int:
    """Test the login on the settings as they would be stored, then store them: a failed add (or an
    interrupted one) leaves nothing behind, not even the team, and a running engine never sees a
    mailbox that is about to be removed again."""
    setup_django()
    from django.db import transaction

    from mailroom.accounts.models import Team
    from mailroom.accounts.services import team_get_or_create
    from mailroom.mailboxes.services import mailbox_build, mailbox_create, mailbox_test

    password = args.password or os.environ.get("MAILROOM_MAILBOX_PASSWORD")
    if not password:
        if not sys.stdin.isatty():
            print("mailroom: a password is needed: --password or MAILROOM_MAILBOX_PASSWORD", file=sys.stderr)
            return 2
        password = getpass.getpass(f"Password for {args.email}: ")
    data = {
        "provider": args.provider,
        "imap_host": args.imap_host,
        "imap_port": args.imap_port,
        "imap_security": args.imap_security,
        "smtp_host": args.smtp_host,
        "smtp_port": args.smtp_port,
        "smtp_security": args.smtp_security,
        "imap_username": args.username,
        "smtp_username": args.username,
        "sync_roles": [r.strip() for r in args.roles.split(",") if r.strip()],
        "tls_verify": not args.no_verify_tls,
    }
    given = {k: v for k, v in data.items() if v is not None}
    if not args.no_test:
        team = Team.objects.filter(name=args.team).first() or Team(name=args.team)
        candidate = mailbox_build(team=team, email=args.email, name=args.name, password=password, **given)
        # SMTP when it is given (or comes with the provider's preset): it is what sending will use.
        res = mailbox_test(mailbox=candidate, check_smtp=bool(candidate.smtp_host))
        if not res.ok:
            reason = " ".join("; ".join(res.errors).split())  # one line, whatever a server said
            print(f"mailroom: mailbox not added: {reason} (use --no-test to add it anyway)", file=sys.stderr)
            return 1
    with transaction.atomic():
        mb = mailbox_create(team=team_get_or_create(name=args.team), email=args.email, name=args.name,
                            password=password, **given)
    print(f"mailbox {mb.pk} added: {mb.email} (syncing {', '.join(mb.roles)})")
    return 0


def _list(args: argparse.Namespace) -> int:
    setup_django()
    from mailroom.conversations.selectors import NO_PROGRESS, folder_progress
    from mailroom.mailboxes.models import Mailbox

    rows: list[dict[str, Any]] = []
    mailboxes = list(Mailbox.objects.prefetch_related("folders").order_by("id"))
    progress = folder_progress(mailbox_ids=[mb.pk for mb in mailboxes])
    for mb in mailboxes:
        folders = [
            {"name": f.name, "role": f.role, "stored": f.stored_count,
             "linked": progress.get(f.pk, NO_PROGRESS).linked,
             "quarantined": progress.get(f.pk, NO_PROGRESS).quarantined,
             "server": f.server_count, "backfill_done": f.backfill_done}
            for f in mb.folders.all() if f.selected
        ]
        rows.append({"id": mb.pk, "email": mb.email, "health": mb.health, "last_error": mb.last_error,
                     "last_sync_at": mb.last_sync_at.isoformat() if mb.last_sync_at else None, "folders": folders})
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return 0
    if not rows:
        print("no mailboxes: add one with 'mailroom mailbox add EMAIL --imap-host ...'")
    for r in rows:
        print(f"{r['id']:>4}  {r['email']:<36} {r['health']:<12} last sync: {r['last_sync_at'] or '-'}")
        if r["last_error"]:
            print(f"      error: {r['last_error']}")
        for f in r["folders"]:
            quarantined = f", {f['quarantined']} quarantined" if f["quarantined"] else ""
            print(
                f"      {f['role']:<8} {f['name']:<24} stored {f['stored']} / linked {f['linked']} / on server"
                f" {f['server']}{quarantined}{'' if f['backfill_done'] else ' (importing)'}"
            )
    return 0


def _test(args: argparse.Namespace) -> int:
    setup_django()
    from mailroom.mailboxes.services import mailbox_test

    res = mailbox_test(mailbox=find_mailbox(args.mailbox))
    if args.json:
        print(json.dumps(res.__dict__, ensure_ascii=False, indent=2))
        return 0 if res.ok else 1
    if res.imap_ok:
        print("IMAP: ok")
        print("  capabilities: " + " ".join(res.imap_capabilities))
        for f in res.folders:
            print(f"  folder: {f['name']} ({f['role']})")
    if res.smtp_ok:
        print("SMTP: ok")
        print("  features: " + " ".join(res.smtp_features))
    for err in res.errors:
        print(err, file=sys.stderr)
    return 0 if res.ok else 1


def _remove(args: argparse.Namespace) -> int:
    setup_django()
    from mailroom.mailboxes.services import mailbox_delete

    mb = find_mailbox(args.mailbox)
    email = mb.email
    mailbox_delete(mailbox=mb)
    print(f"mailbox {email} removed")
    return 0
