"""Import benchmark: Mailroom's initial IMAP import beside mbsync pulling the same mailbox.

Generates a realistic mailbox (mixed sizes, attachments, Cyrillic charsets, threads) into a private
Dovecot on loopback, then in one run:

* mbsync (Debian's isync, Maildir, default fsync) copies the mailbox;
* Mailroom, in a fresh child process, as `mailroom sync --once` runs (the parse/thread pipeline in
  background threads and parse worker processes beside the import): messages/s until every message is
  stored (raw + identity, visible through the API), and until the full body parse and threading have
  completed;
  the child's peak RSS is reported (the generator runs in another process and does not count).

    .venv/bin/python bench/import_bench.py --messages 20000 [--database-url postgres://...]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

WORDS_RU = ["здравствуйте", "коммерческое", "предложение", "счёт", "договор", "поставка", "оплата", "встреча", "менеджер", "клиент", "цена"]
WORDS_EN = ["hello", "quote", "invoice", "contract", "delivery", "payment", "meeting", "manager", "client", "price", "schedule"]
USER, PASSWORD = "manager@company.test", "bench-pass"


def generate(n: int, seed: int = 7) -> Iterator[bytes]:
    """A realistic mailbox, one message at a time (bounded memory)."""
    rnd = random.Random(seed)
    threads: list[tuple[str, str, str]] = []  # (Message-ID, subject, sender) of recent mail
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    blob = os.urandom(1_600_000)
    for i in range(n):
        ru = rnd.random() < 0.5
        words = WORDS_RU if ru else WORDS_EN
        msg = EmailMessage()
        mid = make_msgid(idstring=f"b{i}", domain="client.test")
        sender = f"Client {i % 300} <client{i % 300}@client{i % 40}.test>"
        if threads and rnd.random() < 0.4:
            # The client answers in a thread he is part of.
            parent, subject, sender = rnd.choice(threads)
            msg["In-Reply-To"] = parent
            msg["References"] = parent
            subject = "Re: " + subject
        else:
            subject = " ".join(rnd.choice(words) for _ in range(4)).capitalize()
        threads.append((mid, subject.removeprefix("Re: "), sender))
        if len(threads) > 500:
            threads.pop(0)
        msg["From"] = sender
        msg["To"] = USER
        msg["Subject"] = subject
        msg["Date"] = format_datetime(t0 + timedelta(minutes=7 * i))
        msg["Message-ID"] = mid
        body = "\n".join(" ".join(rnd.choice(words) for _ in range(12)) for _ in range(rnd.randint(3, 40)))
        charset = rnd.choice(["utf-8", "koi8-r", "windows-1251"]) if ru else "utf-8"
        msg.set_content(body, charset=charset)
        if rnd.random() < 0.3:
            msg.add_alternative(f"<html><body><p>{body.replace(chr(10), '<br>')}</p></body></html>", subtype="html")
        r = rnd.random()
        if r < 0.05:
            size = rnd.randint(200_000, 1_500_000)
            start = rnd.randint(0, len(blob) - size)
            msg.add_attachment(blob[start : start + size], maintype="application", subtype="pdf", filename="Договор.pdf")
        elif r < 0.20:
            size = rnd.randint(5_000, 60_000)
            msg.add_attachment(blob[:size], maintype="image", subtype="png", filename="scan.png")
        yield msg.as_bytes()


def run_mbsync(host: str, port: int, workdir: Path) -> float:
    maildir = workdir / "mbsync-maildir"
    maildir.mkdir()
    rc = workdir / "mbsyncrc"
    rc.write_text(
        f"""IMAPAccount bench
Host {host}
Port {port}
User {USER}
Pass {PASSWORD}
SSLType None
AuthMechs LOGIN

IMAPStore remote
Account bench

MaildirStore local
Path {maildir}/
Inbox {maildir}/INBOX
SubFolders Verbatim

Channel bench
Far :remote:
Near :local:
Patterns INBOX
Create Near
Sync Pull
SyncState *
"""
    )
    t = time.perf_counter()
    cp = subprocess.run(["mbsync", "-q", "-c", str(rc), "bench"], capture_output=True, text=True)
    if cp.returncode != 0:
        raise SystemExit(f"mbsync failed: {cp.stderr.strip()}")
    return time.perf_counter() - t


def child(args: argparse.Namespace) -> int:
    """Runs in a fresh process: import, then parse + thread; prints JSON figures."""
    os.environ["DJANGO_SETTINGS_MODULE"] = "mailroom.config.settings"
    import django

    django.setup()
    from django.core.management import call_command
    from django.db.models import Count

    from mailroom.accounts.services import team_get_or_create
    from mailroom.conversations import pipeline
    from mailroom.conversations.models import Message
    from mailroom.ingest.imap.worker import mailbox_sync_once
    from mailroom.mailboxes.services import mailbox_create

    if os.environ.get("DATABASE_URL"):
        call_command("flush", interactive=False, verbosity=0)
    call_command("migrate", verbosity=0)
    mb = mailbox_create(
        team=team_get_or_create(name="bench"), email=USER, imap_host="127.0.0.1", imap_port=args.imap_port,
        imap_security="plain", smtp_host="127.0.0.1", smtp_port=25, smtp_security="plain", password=PASSWORD,
        sync_roles=["inbox"],
    )
    # As `mailroom sync --once` runs it: parsing and threading beside the import (in a process of their
    # own, with its parse workers, where there is a spare core); then whatever is left.
    t = time.perf_counter()
    with pipeline.in_background():
        if os.environ.get("BENCH_PROFILE"):
            import cProfile
            import pstats

            prof = cProfile.Profile()
            prof.runcall(mailbox_sync_once, mb)
            stats = pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime")
            stats.print_stats(25)
        else:
            mailbox_sync_once(mb)
        stored_secs = time.perf_counter() - t
        ru = resource.getrusage(resource.RUSAGE_SELF)
        import_cpu = ru.ru_utime + ru.ru_stime
        stored = Message.objects.count()
        rss_import = ru.ru_maxrss / 1024
        linked_at_import = Message.objects.filter(state=Message.State.LINKED).count()
    pipeline.drain()
    processed_secs = time.perf_counter() - t - stored_secs
    from django.conf import settings as dj_settings

    from mailroom.parsing.workers import parse_pool

    parse_pool(dj_settings.MAILROOM_PARSE_PROCESSES).shutdown()  # reaped: their peak RSS is now known
    worker_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    cpu_total = sum(
        ru.ru_utime + ru.ru_stime for ru in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    )
    states = dict(Message.objects.values_list("state").annotate(n=Count("id")))
    threads = Message.objects.exclude(thread=None).values("thread").distinct().count()
    print(json.dumps({
        "stored": stored, "stored_secs": stored_secs, "processed_secs": processed_secs, "states": states,
        "threads": threads, "rss_import_mb": rss_import, "import_cpu": import_cpu,
        "linked_at_import": linked_at_import,
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "parse_processes": dj_settings.MAILROOM_PARSE_PROCESSES, "worker_rss_mb": worker_rss,
        "cpu_total": cpu_total,
    }))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--database-url", default=os.environ.get("DATABASE_URL", ""))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--imap-port", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)

    workdir = Path(tempfile.mkdtemp(prefix="mailroom-bench-"))
    workdir.chmod(0o755)
    from mailroom.testing.servers import Dovecot

    dovecot = Dovecot(workdir / "servers").start()
    try:
        dovecot.add_user(USER, PASSWORD)
        t = time.perf_counter()
        sizes: list[int] = []

        def counted() -> Iterator[bytes]:
            for raw in generate(args.messages):
                sizes.append(len(raw))
                yield raw

        dovecot.deliver_many(USER, counted())
        total_mb = sum(sizes) / 1e6
        print(f"generated and loaded {args.messages} messages ({total_mb:.0f} MB) in {time.perf_counter() - t:.1f} s", flush=True)

        # Each timed run starts with nothing left to write back: the loading (and the previous run)
        # would otherwise be flushed to disk during it and slow its fsyncs down at random.
        os.sync()
        mb_secs = run_mbsync(dovecot.host, dovecot.imap_port, workdir)
        mbsync_rate = args.messages / mb_secs
        print(f"mbsync done in {mb_secs:.1f} s", flush=True)

        env = {
            **os.environ,
            "MAILROOM_DATA_DIR": str(workdir / "data"),
            "MAILROOM_ENCRYPTION_KEYS": "bench:" + "A" * 43,
        }
        if args.database_url:
            env["DATABASE_URL"] = args.database_url
        else:
            env.pop("DATABASE_URL", None)
        os.sync()
        prefix = ["py-spy", "record", "-r", "200", "-f", "raw", "-o", os.environ["BENCH_PYSPY"], "--threads", *os.environ.get("BENCH_PYSPY_ARGS", "").split(), "--"] if os.environ.get("BENCH_PYSPY") else []
        cp = subprocess.run(
            [*prefix, sys.executable, __file__, "--child", "--imap-port", str(dovecot.imap_port)],
            env=env, capture_output=True, text=True,
        )
        if cp.returncode != 0:
            raise SystemExit(f"Mailroom run failed:\n{cp.stderr[-4000:]}")
        if os.environ.get("BENCH_PROFILE"):
            print(cp.stderr)
        r = json.loads(cp.stdout.strip().splitlines()[-1])
        db = "PostgreSQL" if args.database_url.startswith("postgres") else "SQLite (WAL, synchronous=FULL)"
        store = os.environ.get("MAILROOM_RAW_STORE") or ("database" if db == "PostgreSQL" else "files")
        db += f", raw bytes in {'segment files' if store == 'files' else 'the database'}"
        rate = r["stored"] / r["stored_secs"]
        full_secs = r["stored_secs"] + r["processed_secs"]
        full_rate = r["stored"] / full_secs
        print()
        print(f"mailbox: {args.messages} messages, {total_mb:.0f} MB; database: {db}; {os.cpu_count()} cores")
        print(f"mbsync (isync, Maildir, fsync)        : {mbsync_rate:8.0f} msgs/s  ({mb_secs:.1f} s)")
        print(f"Mailroom import (stored, API-visible) : {rate:8.0f} msgs/s  ({r['stored_secs']:.1f} s, {r['stored']} messages)")
        print(f"  ratio Mailroom import / mbsync      : {rate / mbsync_rate:8.2f}  (target >= 1.0); CPU "
              f"{r['import_cpu']:.1f} s over {r['stored_secs']:.1f} s wall")
        print(f"Mailroom import + full parse + thread : {full_rate:8.0f} msgs/s  ({full_secs:.1f} s; the pipeline runs "
              f"beside the import: {r['linked_at_import']} linked when the import ended)")
        print(f"  CPU, Mailroom and its parse workers : {r['cpu_total']:8.1f} s  (over {full_secs:.1f} s wall on {os.cpu_count()} cores)")
        print(f"  ratio full / mbsync                 : {full_rate / mbsync_rate:8.2f}  (target >= 0.5)")
        print(f"  states {r['states']}, {r['threads']} threads")
        print(f"peak RSS of the Mailroom process      : {r['rss_mb']:8.0f} MB  (import phase {r['rss_import_mb']:.0f} MB; target < 300 MB)")
        print(f"  the other Mailroom processes (the pipeline's, its {r['parse_processes']} parse worker(s)): the largest "
              f"peaked at {r['worker_rss_mb']:.0f} MB")
    finally:
        dovecot.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
