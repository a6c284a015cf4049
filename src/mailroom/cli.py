"""The ``mailroom`` command. Each package registers its own subcommands (``register(subparsers)``);
a handler is ``handler(args) -> int``. Handlers that need the database call :func:`setup_django`."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

COMMAND_MODULES = (
    "mailroom.core.cli",  # serve, demo, migrate, keys
    "mailroom.accounts.cli",  # user, token
    "mailroom.mailboxes.cli",  # mailbox
    "mailroom.ingest.cli",  # sync, quarantine
    "mailroom.parsing.cli",  # parse
    "mailroom.conversations.cli",  # relink
    "mailroom.outbound.cli",  # outbox, relay
)


def setup_django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mailroom.config.settings")
    import django

    django.setup()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mailroom", description="Mailroom: the email core of a CRM.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from mailroom.core.memory import tune_malloc

    tune_malloc()  # before any thread: see core/memory.py
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    from mailroom.core.crypto import KeyMissingError
    from mailroom.core.errors import MailroomError

    try:
        return int(handler(args) or 0)
    except KeyMissingError as exc:
        print(f"mailroom: {exc}", file=sys.stderr)
        return 3
    except MailroomError as exc:
        print(f"mailroom: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if not _missing_tables(exc):
            raise
        print("mailroom: the database is not set up yet (or is older than this version): run 'mailroom migrate' "
              "first ('mailroom serve' migrates by itself)", file=sys.stderr)
        return 1


def _missing_tables(exc: BaseException) -> bool:
    """A query failed because the tables are not there: a fresh data dir, or migrations not applied."""
    from django.db import OperationalError, ProgrammingError

    text = str(exc)
    return isinstance(exc, (OperationalError, ProgrammingError)) and (
        "no such table" in text or "no such column" in text or ("does not exist" in text and "relation" in text)
    )


if __name__ == "__main__":
    sys.exit(main())
