"""Import benchmark: Mailroom's initial IMAP import, on the path a user runs, beside mbsync pulling the
same mailbox in the same run.

Generates a realistic mailbox (mixed sizes, attachments, Cyrillic charsets, threads) into a private
Dovecot on loopback; then, each from a quiet disk (``sync`` before each):

* mbsync (Debian's isync, Maildir, default fsync) copies the mailbox;
* **the product**: ``mailroom serve`` is started on a fresh data directory (and, with
  ``--database-url``, an emptied PostgreSQL database), the mailbox is added through the REST API with
  the API token the first start prints, and the clock stops when ``GET /api/v1/messages`` (linked
  messages: parsed and threaded) counts as many messages as the server holds; every Message-ID is
  then checked to be listed exactly once. Meanwhile a client polls the API twice a second (its
  p50/p95 latency is printed) and the PSS of serve's whole process tree (the parse workers and any
  pipeline process included) is sampled every 0.2 s;
* ``mailroom sync --once`` in a child process, as a second line (stored, then parsed and threaded).

    .venv/bin/python bench/import_bench.py --messages 20000 [--database-url postgres://...] [--runs 3] [--dkim 0.8]
    [--skip-once]

With ``--database-url`` the database named there is dropped and created afresh for each run.
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
import threading
import time
import urllib.parse
import urllib.request
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
MX = "mx.company.test"


DKIM_SELECTOR = b"s1"
DKIM_DOMAINS = [f"client{k}.test" for k in range(40)]


def dkim_key() -> tuple[bytes, bytes]:
    """An RSA key: (private PEM, the TXT record of its public half)."""
    import base64

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)


def generate(n: int, seed: int = 7, *, signed: float = 0.0, key: bytes = b"") -> Iterator[bytes]:
    """A realistic mailbox, one message at a time (bounded memory). ``signed``: the share of messages
    DKIM-signed by their sender's domain with ``key`` (Mailroom then verifies them itself)."""
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
        # As the company's MX stamps it (trusted: MAILROOM_TRUSTED_AUTHSERV_IDS): replies are threaded
        # only for authenticated senders, so without it every message would start a thread.
        domain = sender.rpartition("@")[2].rstrip(">")
        msg["Authentication-Results"] = f"{MX}; dkim=pass header.d={domain}; dmarc=pass header.from={domain}"
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
        raw = msg.as_bytes()
        if signed and rnd.random() < signed:
            import dkim

            sig = dkim.sign(raw, DKIM_SELECTOR, domain.encode(), key,
                            include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
            raw = sig + raw
        yield raw


def run_mbsync(host: str, port: int, workdir: Path) -> float:
    maildir = workdir / "mbsync-maildir"
    maildir.mkdir(parents=True)
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



_CPU: dict[int, int] = {}  # pid -> CPU ticks seen, of serve's process tree
_NAMES: dict[int, str] = {}


def _process_name(cmdline: bytes, child_of_root: bool) -> str:
    if b"resource_tracker" in cmdline:
        return "resource tracker"
    if b"spawn_main" in cmdline:  # serve's own child: the pipeline; its children: the parse workers
        return "pipeline process" if child_of_root else "parse worker"
    return " ".join(a.rsplit("/", 1)[-1] for a in cmdline.decode(errors="replace").split("\0")[:3] if a)[:40]


def tree_pss_kb(root: int) -> dict[str, int]:
    """PSS of ``root`` and each of its descendants, in kB, by "pid name" (a process gone meanwhile
    is left out)."""
    from mailroom.testing.servers import live_processes, process_tree

    processes = live_processes()
    parents = {pid: int(fields[1]) for pid, fields in processes.items()}
    out: dict[str, int] = {}
    for pid in process_tree(root, parents) & set(processes):
        # utime, stime, and those of its reaped children (a parse worker restarted): clock ticks
        _CPU[pid] = max(_CPU.get(pid, 0), sum(int(x) for x in processes[pid][11:15]))
        if pid not in _NAMES:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    _NAMES[pid] = _process_name(f.read(), parents.get(pid) == root)
            except OSError:
                continue
        try:
            name = _NAMES.get(pid, "?")
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        out[f"{pid} {name}"] = int(line.split()[1])
                        break
        except OSError:
            continue
    return out


def _print_smaps(pid: int) -> None:
    by: dict[str, int] = {}
    name = ""
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split()
            if "-" in head[0] and len(head) >= 5 and ":" in head[3]:
                name = head[5] if len(head) > 5 else "[anon]"
            elif head[0] == "Pss:":
                by[name] = by.get(name, 0) + int(head[1])
    top = sorted(by.items(), key=lambda kv: -kv[1])[:8]
    print("serve PSS by mapping (MB): " + ", ".join(f"{k.rsplit('/', 1)[-1]} {v / 1024:.0f}" for k, v in top))


class Api:
    def __init__(self, base: str, token: str) -> None:
        self.base, self.token = base, token

    def call(self, method: str, path: str, body: dict[str, object] | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method, headers={  # noqa: S310
            "Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310 - loopback only (http://127.0.0.1)
            return json.loads(resp.read() or b"null")

    def count(self, mailbox: int, state: str = "linked") -> int:
        return int(self.call("GET", f"/api/v1/messages?mailbox={mailbox}&limit=1&state={state}")["count"])

    def message_ids(self, mailbox: int) -> list[str]:
        out: list[str] = []
        cursor = ""
        while True:
            q = f"/api/v1/messages?mailbox={mailbox}&limit=500" + (f"&cursor={urllib.parse.quote(cursor)}" if cursor else "")
            page = self.call("GET", q)
            out.extend(m["message_id"] for m in page["items"])
            cursor = page["next_cursor"]
            if not cursor:
                return out


def fresh_database(url: str) -> None:
    """Drop and create the database ``url`` names (PostgreSQL)."""
    import psycopg

    parts = urllib.parse.urlsplit(url)
    name = parts.path.lstrip("/")
    admin = urllib.parse.urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def run_env(workdir: Path, database_url: str) -> dict[str, str]:
    env = {
        **os.environ,
        "MAILROOM_DATA_DIR": str(workdir),
        "MAILROOM_ENCRYPTION_KEYS": "bench:" + "A" * 43,
        "MAILROOM_TRUSTED_AUTHSERV_IDS": MX,
    }
    if database_url:
        fresh_database(database_url)
        env["DATABASE_URL"] = database_url
    else:
        env.pop("DATABASE_URL", None)
    return env


def run_serve(args: argparse.Namespace, imap_port: int, workdir: Path, expected: set[str]) -> dict[str, float]:
    """The product's path: ``mailroom serve``, the mailbox added through the REST API, the clock
    stopped when the API lists every message."""
    from mailroom.testing.servers import free_port

    workdir.mkdir(parents=True)
    _CPU.clear()  # this run's processes only
    _NAMES.clear()
    env = run_env(workdir, args.database_url)
    port = free_port()
    os.sync()
    spy = os.environ.get("BENCH_PYSPY")  # a profile of serve's process tree (py-spy's raw format)
    prefix = ["py-spy", "record", "--subprocesses", "-r", "100", "-f", "raw", "-o", spy, "--"] if spy else []
    proc = subprocess.Popen(
        [*prefix, str(Path(sys.executable).parent / "mailroom"), "serve", "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    token = ""
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("API token for scripts:"):
            token = line.split(":", 1)[1].strip()
            break
    if not token:
        proc.wait(10)
        raise SystemExit(f"mailroom serve did not start:\n{proc.stderr.read()[-4000:] if proc.stderr else ''}")
    threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep draining its output
    api = Api(f"http://127.0.0.1:{port}", token)
    at_peak = tree_pss_kb(proc.pid)
    peak = [sum(at_peak.values())]
    idle_pss = peak[0]
    done = threading.Event()
    latencies: list[float] = []

    def sample() -> None:
        nonlocal at_peak
        while not done.wait(0.2):
            now = tree_pss_kb(proc.pid)
            if sum(now.values()) > peak[0]:
                peak[0], at_peak = sum(now.values()), now

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        tree_pss_kb(proc.pid)
        cpu0 = dict(_CPU)  # start-up (migrations, the first admin) is not the import's
        t0 = time.perf_counter()
        mb = api.call("POST", "/api/v1/mailboxes", {
            "email": USER, "imap_host": "127.0.0.1", "imap_port": imap_port, "imap_security": "plain",
            "smtp_host": "127.0.0.1", "smtp_port": 25, "smtp_security": "plain", "password": PASSWORD,
            "sync_roles": ["inbox"],
        })
        n = len(expected)
        stored_at = 0.0
        while True:
            t = time.perf_counter()
            linked = api.count(mb["id"])
            latencies.append(time.perf_counter() - t)
            if not stored_at:
                t = time.perf_counter()
                if api.count(mb["id"], "any") >= n:
                    stored_at = time.perf_counter() - t0
                latencies.append(time.perf_counter() - t)
            if linked >= n:
                secs = time.perf_counter() - t0
                break
            if proc.poll() is not None:
                raise SystemExit(f"mailroom serve exited:\n{proc.stderr.read()[-4000:] if proc.stderr else ''}")
            time.sleep(0.5)  # a client polling twice a second: its cost is the product's too
        done.set()
        sampler.join()
        tree_pss_kb(proc.pid)
        if os.environ.get("BENCH_SMAPS"):  # what serve's memory is made of, by mapping
            _print_smaps(proc.pid)
        for pid, ticks in cpu0.items():
            _CPU[pid] -= ticks
        cpu = sum(_CPU.values()) / os.sysconf("SC_CLK_TCK")
        t = time.perf_counter()
        listed = api.message_ids(mb["id"])
        if args.dkim:  # the signatures were verified, not failed: a sample of 100 messages
            page = api.call("GET", f"/api/v1/messages?mailbox={mb['id']}&limit=100")
            verdicts: dict[str, int] = {}
            for item in page["items"]:
                auth = api.call("GET", f"/api/v1/messages/{item['id']}")["auth"] or {}
                verdict = f"{auth.get('source', 'none')}:{auth.get('dkim', 'none')}"
                verdicts[verdict] = verdicts.get(verdict, 0) + 1
            print(f"  DKIM verdicts of 100 messages (source:result): {verdicts}")
        list_secs = time.perf_counter() - t
        missing = expected - set(listed)
        if missing or len(listed) != len(set(listed)) or len(listed) != n:
            raise SystemExit(f"serve run: {len(missing)} Message-IDs missing, {len(listed) - len(set(listed))} doubled")
    finally:
        done.set()
        if spy:  # py-spy writes its profile on SIGINT
            import signal

            proc.send_signal(signal.SIGINT)
        else:
            proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    latencies.sort()
    return {
        "secs": secs, "stored_secs": stored_at or secs, "list_secs": list_secs,
        "pss_mb": peak[0] / 1024, "idle_pss_mb": idle_pss / 1024,
        "p50_ms": latencies[len(latencies) // 2] * 1000, "p95_ms": latencies[int(len(latencies) * 0.95)] * 1000,
        "requests": len(latencies), "cpu": cpu,
        "cpu_by": ", ".join(f"{_NAMES.get(pid, '?')} {ticks / os.sysconf('SC_CLK_TCK'):.1f}" for pid, ticks in _CPU.items()),
        "at_peak": ", ".join(f"{name.split(' ', 1)[1]} {kb / 1024:.0f}" for name, kb in sorted(at_peak.items())),
    }


def run_once(args: argparse.Namespace, imap_port: int, workdir: Path) -> dict[str, float]:
    env = run_env(workdir, args.database_url)
    os.sync()
    spy = os.environ.get("BENCH_PYSPY_ONCE")
    prefix = ["py-spy", "record", "--subprocesses", "-r", "100", "-f", "raw", "-o", spy, "--"] if spy else []
    cp = subprocess.run(
        [*prefix, sys.executable, __file__, "--child", "--imap-port", str(imap_port)],
        env=env, capture_output=True, text=True,
    )
    if cp.returncode != 0:
        raise SystemExit(f"Mailroom run failed:\n{cp.stderr[-4000:]}")
    if os.environ.get("BENCH_PROFILE"):
        print(cp.stderr)
    return json.loads(cp.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--database-url", default=os.environ.get("DATABASE_URL", ""))
    ap.add_argument("--runs", type=int, default=1, help="serve runs (each beside a fresh mbsync run)")
    ap.add_argument("--skip-once", action="store_true", help="leave out the `sync --once` line")
    ap.add_argument("--dkim", type=float, default=0.0, metavar="SHARE",
                    help="DKIM-sign this share of the messages (0..1); Mailroom verifies them against a DNS "
                    "server on loopback, as it does real mail's signatures")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--imap-port", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)

    workdir = Path(tempfile.mkdtemp(prefix="mailroom-bench-"))
    workdir.chmod(0o755)
    from mailroom.testing.servers import Dovecot

    dovecot = Dovecot(workdir / "servers").start()
    db = "PostgreSQL" if args.database_url.startswith("postgres") else "SQLite (WAL, synchronous=FULL)"
    store = os.environ.get("MAILROOM_RAW_STORE") or ("database" if db == "PostgreSQL" else "files")
    db += f", raw bytes in {'segment files' if store == 'files' else 'the database'}"
    try:
        dovecot.add_user(USER, PASSWORD)
        t = time.perf_counter()
        sizes: list[int] = []
        expected: set[str] = set()

        key, record = dkim_key() if args.dkim else (b"", b"")
        if args.dkim:
            from mailroom.testing.dns import LoopbackDns

            dns_server = LoopbackDns({f"s1._domainkey.{d}": [record] for d in DKIM_DOMAINS}).start()
            os.environ["MAILROOM_DNS_SERVERS"] = dns_server.server  # passed on to Mailroom's processes
            os.environ["MAILROOM_DKIM_VERIFY"] = "1"

        def counted() -> Iterator[bytes]:
            for raw in generate(args.messages, signed=args.dkim, key=key):
                sizes.append(len(raw))
                head = raw[: raw.find(b"\n\n")]
                mid = head.split(b"Message-ID: <", 1)[1].split(b">", 1)[0]
                expected.add(mid.decode())
                yield raw

        dovecot.deliver_many(USER, counted())
        total_mb = sum(sizes) / 1e6
        print(f"generated and loaded {args.messages} messages ({total_mb:.0f} MB) in {time.perf_counter() - t:.1f} s", flush=True)
        signed = f"; {args.dkim:.0%} DKIM-signed, verified by Mailroom" if args.dkim else ""
        print(f"mailbox: {args.messages} messages, {total_mb:.0f} MB{signed}; database: {db}; {os.cpu_count()} cores",
              flush=True)
        for run in range(1, args.runs + 1):
            os.sync()
            mb_secs = run_mbsync(dovecot.host, dovecot.imap_port, workdir / f"mbsync-{run}")
            shutil.rmtree(workdir / f"mbsync-{run}", ignore_errors=True)
            mbsync_rate = args.messages / mb_secs
            r = run_serve(args, dovecot.imap_port, workdir / f"serve-{run}", expected)
            shutil.rmtree(workdir / f"serve-{run}", ignore_errors=True)
            rate = args.messages / r["secs"]
            print(f"run {run}:")
            print(f"  mbsync (isync, Maildir, fsync)            : {mbsync_rate:8.0f} msgs/s  ({mb_secs:.1f} s)")
            target = "0.7" if db.startswith("PostgreSQL") else "1.0"
            stored_rate = args.messages / r["stored_secs"]
            print(f"  mailroom serve + REST API: all stored     : {stored_rate:8.0f} msgs/s  ({r['stored_secs']:.1f} s: "
                  f"the API lists every message with state=any)")
            print(f"    ratio stored / mbsync                   : {stored_rate / mbsync_rate:8.2f}  (target >= {target})")
            print(f"  mailroom serve + REST API: all threaded   : {rate:8.0f} msgs/s  ({r['secs']:.1f} s: parsed, threaded "
                  f"and in the default listing; every Message-ID listed once)")
            print(f"    ratio threaded / mbsync                 : {rate / mbsync_rate:8.2f}  (target >= {target})")
            print(f"    CPU of serve's process tree             : {r['cpu']:8.1f} s  ({r['cpu'] * 1000 / args.messages:.2f} ms "
                  f"a message; {os.cpu_count()} cores give {os.cpu_count() * r['secs']:.1f} s in that time)")
            print(f"      s by process: {r['cpu_by']}")
            print(f"    peak PSS of serve's process tree        : {r['pss_mb']:8.0f} MB  (idle {r['idle_pss_mb']:.0f} MB; target < 300 MB)")
            print(f"      at the peak, MB by process: {r['at_peak']}")
            print(f"    API during the import                   : p50 {r['p50_ms']:.0f} ms, p95 {r['p95_ms']:.0f} ms "
                  f"over {r['requests']:.0f} count requests; listing all {args.messages} took {r['list_secs']:.1f} s")
            sys.stdout.flush()
        if not args.skip_once:
            (workdir / "once").mkdir()
            r = run_once(args, dovecot.imap_port, workdir / "once")
            rate = r["stored"] / r["stored_secs"]
            full_secs = r["stored_secs"] + r["processed_secs"]
            print("second line, `mailroom sync --once` (a child process, as the command runs):")
            print(f"  stored (raw + identity)                   : {rate:8.0f} msgs/s  ({r['stored_secs']:.1f} s, "
                  f"{r['stored']} messages; CPU {r['import_cpu']:.1f} s)")
            print(f"  stored + parsed + threaded                : {r['stored'] / full_secs:8.0f} msgs/s  ({full_secs:.1f} s; "
                  f"{r['linked_at_import']} linked when the import ended; states {r['states']}, {r['threads']} threads)")
            print(f"  peak RSS                                  : {r['rss_mb']:8.0f} MB  (largest other process "
                  f"{r['worker_rss_mb']:.0f} MB); CPU of all its processes {r['cpu_total']:.1f} s")
    finally:
        dovecot.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
