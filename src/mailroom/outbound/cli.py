"""``mailroom outbox list|send-due|retry|cancel|worker`` and ``mailroom relay serve``."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Any

from mailroom.cli import setup_django


def register(subparsers: Any) -> None:
    outbox = subparsers.add_parser("outbox", help="outgoing mail: list, send due messages, retry")
    osub = outbox.add_subparsers(dest="outbox_command", metavar="ACTION")

    p = osub.add_parser("list", help="list outbox messages")
    p.add_argument("--state", default=None)
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(handler=_list)

    p = osub.add_parser("send-due", help="send due messages once (or --loop until interrupted)")
    p.add_argument("--limit", type=int, default=200)
    p.add_argument("--parallel", type=int, default=4)
    p.add_argument("--loop", action="store_true", help="run the outbox worker until interrupted")
    p.set_defaults(handler=_send_due)

    p = osub.add_parser("retry", help="retry a failed message")
    p.add_argument("id", type=int)
    p.set_defaults(handler=_retry)

    p = osub.add_parser("cancel", help="cancel a queued message")
    p.add_argument("id", type=int)
    p.set_defaults(handler=_cancel)

    relay = subparsers.add_parser("relay", help="the relay endpoint for reply+<token>@<relay domain>")
    rsub = relay.add_subparsers(dest="relay_command", metavar="ACTION")
    p = rsub.add_parser("serve", help="run the inbound SMTP/LMTP endpoint")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=2525)
    p.add_argument("--lmtp", action="store_true", help="speak LMTP instead of SMTP")
    p.set_defaults(handler=_relay_serve)


def _list(args: argparse.Namespace) -> int:
    setup_django()
    from mailroom.outbound.models import OutboxMessage

    qs = OutboxMessage.objects.order_by("-id")
    if args.state:
        from mailroom.core.text import check_text

        qs = qs.filter(state=check_text(args.state, "state"))
    for row in qs[: args.limit]:
        code = f" {row.last_smtp_code} {row.last_smtp_text[:60]}" if row.last_smtp_code else ""
        print(f"{row.pk}\t{row.state}\t{row.attempts}\t{','.join(row.to)}\t{row.subject[:50]}{code}")
    return 0


def _stop_on_signals(stop: threading.Event) -> None:
    def handler(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _send_due(args: argparse.Namespace) -> int:
    setup_django()
    from mailroom.outbound.services import new_worker_id
    from mailroom.outbound.tasks import outbox_round, run_outbox_worker

    if args.loop:
        stop = threading.Event()
        _stop_on_signals(stop)
        run_outbox_worker(stop, limit=args.limit, parallel=args.parallel)
        return 0
    worker = new_worker_id()
    total = 0
    while True:
        n = outbox_round(worker_id=worker, limit=args.limit, parallel=args.parallel)
        total += n
        if n == 0:
            break
    print(f"outbox: {total} handled")
    return 0


def _retry(args: argparse.Namespace) -> int:
    setup_django()
    from mailroom.core.errors import NotFound
    from mailroom.outbound.models import OutboxMessage
    from mailroom.outbound.services import outbox_retry

    row = OutboxMessage.objects.filter(pk=args.id).first()
    if row is None:
        raise NotFound(f"outbox message {args.id} not found")
    row = outbox_retry(outbox=row)
    print(f"{row.pk}\t{row.state}")
    return 0


def _cancel(args: argparse.Namespace) -> int:
    setup_django()
    from mailroom.core.errors import NotFound
    from mailroom.outbound.models import OutboxMessage
    from mailroom.outbound.services import outbox_cancel

    row = OutboxMessage.objects.filter(pk=args.id).first()
    if row is None:
        raise NotFound(f"outbox message {args.id} not found")
    row = outbox_cancel(outbox=row)
    print(f"{row.pk}\t{row.state}")
    return 0


def _relay_serve(args: argparse.Namespace) -> int:
    setup_django()
    from django.conf import settings

    from mailroom.ingest.lmtp.server import serve

    if not settings.MAILROOM_RELAY_DOMAIN:
        print("mailroom: MAILROOM_RELAY_DOMAIN is not set: every relay address will be refused", file=sys.stderr)
    stop = threading.Event()
    _stop_on_signals(stop)
    print(f"relay: listening on {args.host}:{args.port} ({'LMTP' if args.lmtp else 'SMTP'})", flush=True)
    serve(host=args.host, port=args.port, lmtp=args.lmtp, stop_event=stop)
    return 0
