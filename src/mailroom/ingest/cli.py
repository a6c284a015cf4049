"""`mailroom sync` and `mailroom quarantine`."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from typing import Any

from mailroom.cli import setup_django


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sync = sub.add_parser("sync", help="sync mailboxes (IMAP): continuously, or --once")
    sync.add_argument("--mailbox", help="only this mailbox (id or address)")
    sync.add_argument("--once", action="store_true", help="import everything pending, process it, and exit")
    sync.add_argument("--no-progress", action="store_true")
    sync.set_defaults(handler=_sync)

    q = sub.add_parser("quarantine", help="messages that failed to import or process")
    qsub = q.add_subparsers(dest="quarantine_command", required=True)
    ql = qsub.add_parser("list")
    ql.set_defaults(handler=_q_list)
    qr = qsub.add_parser("replay", help="put quarantined items back into the pipeline")
    qr.add_argument("--message", type=int, action="append", help="message id (default: all)")
    qr.set_defaults(handler=_q_replay)


class _Bar:
    """A progress bar per folder on a terminal; silent otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bars: dict[int, Any] = {}

    def __call__(self, folder: Any, n: int) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        bar = self.bars.get(folder.pk)
        if bar is None:
            bar = self.bars[folder.pk] = tqdm(
                total=folder.server_count, initial=folder.stored_count - n, unit="msg",
                desc=f"{folder.mailbox.email} {folder.name}", file=sys.stderr, leave=True,
            )
        bar.update(n)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def _sync(args: argparse.Namespace) -> int:
    setup_django()
    from mailroom.conversations import pipeline
    from mailroom.ingest.imap.worker import mailbox_sync_once
    from mailroom.mailboxes.cli import find_mailbox
    from mailroom.mailboxes.connect import ImapError
    from mailroom.mailboxes.models import Mailbox

    mailboxes = [find_mailbox(args.mailbox)] if args.mailbox else list(Mailbox.objects.filter(sync_enabled=True))
    if args.once:
        bar = _Bar(enabled=sys.stderr.isatty() and not args.no_progress)
        failed = 0
        with pipeline.in_background() as handled:  # parse and thread while the import runs
            for mb in mailboxes:
                try:
                    results = mailbox_sync_once(mb, progress=bar)
                except ImapError as exc:
                    failed += 1
                    print(f"mailroom: {mb.email}: {exc.message}", file=sys.stderr)
                    continue
                for name, res in results.items():
                    print(f"{mb.email} {name}: {res.stored} new" + (" (UIDVALIDITY changed: resynced)" if res.reset else ""))
        bar.close()
        processed = sum(handled) + pipeline.drain()
        print(f"processed {processed} pipeline steps")
        return 1 if failed else 0

    from mailroom.ingest.engine import SyncEngine

    engine = SyncEngine()
    engine.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("syncing; Ctrl-C to stop", file=sys.stderr)
    with contextlib.suppress(KeyboardInterrupt):
        stop.wait()
    engine.stop()
    return 0


def _q_list(args: argparse.Namespace) -> int:
    setup_django()
    from mailroom.conversations.models import Message
    from mailroom.ingest.models import ImportFailure

    n = 0
    for m in Message.objects.filter(state=Message.State.QUARANTINED).order_by("id"):
        n += 1
        print(f"message {m.pk} <{m.message_id}>: {m.last_error.splitlines()[0] if m.last_error else ''}")
    for f in ImportFailure.objects.select_related("folder__mailbox").order_by("id"):
        n += 1
        state = "quarantined" if f.quarantined else f"retrying ({f.attempts} attempts)"
        print(f"import {f.folder.mailbox.email} {f.folder.name} uid {f.uid}: {state}: {f.reason}")
    if n == 0:
        print("nothing quarantined")
    return 0


def _q_replay(args: argparse.Namespace) -> int:
    setup_django()
    from mailroom.conversations import pipeline
    from mailroom.conversations.models import Message
    from mailroom.ingest.models import ImportFailure
    from mailroom.mailboxes.models import Folder

    qs = Message.objects.filter(state=Message.State.QUARANTINED)
    if args.message:
        qs = qs.filter(pk__in=args.message)
    pks = list(qs.values_list("pk", flat=True))
    for pk in pks:
        pipeline.quarantine_replay(message_pk=pk)
    # Quarantined import failures: rewind the cursor so the next sync fetches them again.
    n_imports = 0
    if not args.message:
        for f in ImportFailure.objects.filter(quarantined=True).select_related("folder"):
            folder: Folder = f.folder
            if f.uidvalidity == folder.uidvalidity:
                # Rewind whichever cursor passed it; re-fetched UIDs we already hold are recognised.
                if folder.backfill_low_uid is not None and f.uid < folder.backfill_low_uid:
                    Folder.objects.filter(pk=folder.pk).update(backfill_low_uid=f.uid + 1, backfill_done=False)
                elif f.uid <= folder.synced_high_uid:
                    Folder.objects.filter(pk=folder.pk).update(synced_high_uid=f.uid - 1, uidnext=None)
            f.delete()
            n_imports += 1
    done = pipeline.drain()
    print(f"replayed {len(pks)} messages and {n_imports} import failures ({done} pipeline steps)")
    return 0
