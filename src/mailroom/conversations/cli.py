"""``mailroom relink [--since DATE] [--team ID]``: re-run routing and linking over stored messages
(after rules or contacts change). Idempotent; users' placements (merge/split/accept) are kept."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import Any

BATCH = 500


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("relink", help="re-run threading and contact/deal linking over stored messages")
    p.add_argument("--since", help="only messages dated on or after DATE (YYYY-MM-DD or ISO 8601)")
    p.add_argument("--team", type=int, help="only this team id")
    p.add_argument("--batch", type=int, default=BATCH, help=f"messages per transaction (default {BATCH})")
    p.set_defaults(handler=handle_relink)


def _since(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        d = datetime.fromisoformat(value)
    except ValueError as exc:
        from mailroom.core.errors import InvalidInput

        raise InvalidInput(f"--since: {value!r} is not a date (YYYY-MM-DD)") from exc
    return d if d.tzinfo else d.replace(tzinfo=UTC)


def relink(
    *, since: datetime | None = None, team_id: int | None = None, batch: int = BATCH, progress: bool = False
) -> int:
    from mailroom.conversations.linking import LINKABLE, messages_link
    from mailroom.conversations.models import Message

    qs = Message.objects.filter(state__in=LINKABLE)
    if since is not None:
        qs = qs.filter(date__gte=since)
    if team_id is not None:
        qs = qs.filter(team_id=team_id)
    pks = list(qs.order_by("date", "id").values_list("id", flat=True))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(pks), unit="msg", desc="relink")
    for start in range(0, len(pks), batch):
        chunk = pks[start : start + batch]
        messages_link(message_pks=chunk)
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return len(pks)


def handle_relink(args: argparse.Namespace) -> int:
    from mailroom.cli import setup_django

    setup_django()
    n = relink(
        since=_since(args.since), team_id=args.team, batch=max(1, args.batch), progress=sys.stderr.isatty()
    )
    print(f"relinked {n} message(s)")
    return 0
