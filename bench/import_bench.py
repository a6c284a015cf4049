"""Import benchmark: Mailroom's initial IMAP import beside mbsync pulling the same mailbox.

Generates a realistic mailbox (mixed sizes, attachments, Cyrillic charsets, threads), loads it into a
private Dovecot on loopback, then measures in one run:

* mbsync (Debian's isync, default fsync) copying the mailbox into a Maildir;
* Mailroom: messages/s until every message is stored (raw + identity, visible through the API);
* Mailroom: messages/s until full body parsing and header threading have completed;
* peak RSS of the Mailroom process.

    .venv/bin/python bench/import_bench.py --messages 20000
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

WORDS_RU = ["здравствуйте", "коммерческое", "предложение", "счёт", "договор", "поставка", "оплата", "встреча", "менеджер", "клиент", "цена"]
WORDS_EN = ["hello", "quote", "invoice", "contract", "delivery", "payment", "meeting", "manager", "client", "price", "schedule"]


def generate(n: int, seed: int = 7) -> list[bytes]:
    rnd = random.Random(seed)
    out: list[bytes] = []
    threads: list[tuple[str, str]] = []
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    for i in range(n):
        ru = rnd.random() < 0.5
        words = WORDS_RU if ru else WORDS_EN
        msg = EmailMessage()
        mid = make_msgid(idstring=f"b{i}", domain="client.test")
        if threads and rnd.random() < 0.4:
            parent, subject = rnd.choice(threads)
            msg["In-Reply-To"] = parent
            msg["References"] = parent
            subject = "Re: " + subject
        else:
            subject = " ".join(rnd.choice(words) for _ in range(4)).capitalize()
        threads.append((mid, subject.removeprefix("Re: ")))
        if len(threads) > 500:
            threads.pop(0)
        msg["From"] = f"Client {i % 300} <client{i % 300}@client{i % 40}.test>"
        msg["To"] = "manager@company.test"
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
            msg.add_attachment(os.urandom(rnd.randint(200_000, 1_500_000)), maintype="application", subtype="pdf", filename="Договор.pdf")
        elif r < 0.20:
            msg.add_attachment(os.urandom(rnd.randint(5_000, 60_000)), maintype="image", subtype="png", filename="scan.png")
        out.append(msg.as_bytes())
    return out


def run_mbsync(dovecot, user: str, password: str, workdir: Path) -> float:  # type: ignore[no-untyped-def]
    maildir = workdir / "mbsync-maildir"
    maildir.mkdir()
    rc = workdir / "mbsyncrc"
    rc.write_text(
        f"""IMAPAccount bench
Host {dovecot.host}
Port {dovecot.imap_port}
User {user}
Pass {password}
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


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--database-url", default=os.environ.get("DATABASE_URL", ""))
    args = ap.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="mailroom-bench-"))
    workdir.chmod(0o755)
    os.environ["MAILROOM_DATA_DIR"] = str(workdir / "data")
    os.environ.setdefault("MAILROOM_ENCRYPTION_KEYS", "bench:" + "A" * 43)
    if args.database_url:
        os.environ["DATABASE_URL"] = args.database_url
    os.environ["DJANGO_SETTINGS_MODULE"] = "mailroom.config.settings"
    import django

    django.setup()
    from django.core.management import call_command

    from mailroom.accounts.services import team_get_or_create
    from mailroom.conversations import pipeline
    from mailroom.conversations.models import Message
    from mailroom.ingest.imap.worker import mailbox_sync_once
    from mailroom.mailboxes.services import mailbox_create
    from mailroom.testing.servers import Dovecot

    if args.database_url:
        call_command("flush", interactive=False, verbosity=0)
    call_command("migrate", verbosity=0)

    print(f"generating {args.messages} messages ...", flush=True)
    raws = generate(args.messages)
    total_mb = sum(map(len, raws)) / 1e6
    dovecot = Dovecot(workdir / "servers").start()
    try:
        user, password = "manager@company.test", "bench-pass"
        dovecot.add_user(user, password)
        t = time.perf_counter()
        dovecot.deliver_many(user, raws)
        print(f"loaded {len(raws)} messages ({total_mb:.0f} MB) into Dovecot in {time.perf_counter() - t:.1f} s", flush=True)
        del raws

        mb_secs = run_mbsync(dovecot, user, password, workdir)
        mbsync_rate = args.messages / mb_secs

        mb = mailbox_create(
            team=team_get_or_create(name="bench"), email=user, imap_host=dovecot.host, imap_port=dovecot.imap_port,
            imap_security="plain", smtp_host=dovecot.host, smtp_port=25, smtp_security="plain", password=password,
            sync_roles=["inbox"],
        )
        t = time.perf_counter()
        if os.environ.get("BENCH_PROFILE"):
            import cProfile
            import pstats

            prof = cProfile.Profile()
            prof.runcall(mailbox_sync_once, mb)
            pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
        else:
            mailbox_sync_once(mb)
        stored_secs = time.perf_counter() - t
        stored = Message.objects.count()
        print(f"imported {stored} messages in {stored_secs:.1f} s; mbsync took {mb_secs:.1f} s", flush=True)
        t2 = time.perf_counter()
        if os.environ.get("BENCH_PROFILE_PIPELINE"):
            import cProfile
            import pstats

            prof = cProfile.Profile()
            prof.runcall(pipeline.drain)
            pstats.Stats(prof).sort_stats("tottime").print_stats(20)
        else:
            pipeline.drain()
        processed_secs = stored_secs + (time.perf_counter() - t2)
        states = dict(Message.objects.values_list("state").annotate(n=__import__("django.db.models", fromlist=["Count"]).Count("id")))
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        db = "PostgreSQL" if args.database_url.startswith("postgres") else "SQLite (WAL)"
        rate = stored / stored_secs
        print()
        print(f"mailbox: {args.messages} messages, {total_mb:.0f} MB; database: {db}")
        print(f"mbsync (isync, Maildir, fsync)      : {mbsync_rate:8.0f} msgs/s  ({mb_secs:.1f} s)")
        print(f"Mailroom import (stored, API-visible): {rate:8.0f} msgs/s  ({stored_secs:.1f} s, {stored} messages)")
        print(f"  ratio Mailroom/mbsync              : {rate / mbsync_rate:8.2f}  (target >= 1.0)")
        print(f"Mailroom full parse + threading      : {stored / processed_secs:8.0f} msgs/s  ({processed_secs:.1f} s) "
              f"ratio {stored / processed_secs / mbsync_rate:.2f} (target >= 0.5); states {states}")
        print(f"peak RSS                             : {rss_mb:8.0f} MB  (target < 300 MB)")
    finally:
        dovecot.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
