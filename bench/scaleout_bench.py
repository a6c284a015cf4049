"""Scale-out benchmark: ``mailroom serve`` (the web only) + N ``mailroom worker`` processes on
PostgreSQL (raw bytes in the database) and a Redis broker, as ``MAILROOM_TASKS=celery`` runs them.

Part 1, **throughput with 1 and 2 workers** (in the same run, each on an emptied database): a private
Dovecot holds M mailboxes of generated mail (bench/import_bench.py's ``generate()``); the mailboxes
are added through the REST API and the clock stops when the API's count of linked messages equals
the total and every Message-ID is listed. Printed: the time and rate, CPU seconds per message by
process kind (serve, each worker, its parse workers, the PostgreSQL backends of the benchmark's
database), peak PSS of each worker's process tree and the database size.

Part 2, **new-mail latency at 200 IDLE mailboxes during a backfill**: 200 mailboxes are synced and
IDLE, then one more mailbox with a large backfill is added; while it imports, one new message is
delivered (LMTP) to each of the 200 at a steady rate, and the time from delivery to the message
being listed by ``GET /api/v1/messages?mailbox=<id>`` (state=any, and the default listing: linked)
is measured; p50/p95/p99/max are printed, and whether the backfill was still running throughout.
One poller lists the team's newest messages every ``--poll`` seconds for all the messages that wait
(``--poll-mode mailbox``: a poller per message, of its mailbox, whose load grew with the latency it
measured); a message seen linked must then be in its mailbox's default listing.

    .venv/bin/python bench/scaleout_bench.py [--mailboxes 8] [--messages-per-mailbox 2000]
        [--idle-mailboxes 200] [--backfill 20000] [--rate 5] [--database-url postgres://...]
        [--redis-url redis://127.0.0.1:6379/9] [--poll 0.1] [--poll-mode team|mailbox]
        [--skip-throughput] [--skip-latency]

The database named by --database-url is dropped and created afresh for each run; the Redis database
named by --redis-url is flushed. This is a program that prints figures, not a test.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from import_bench import MX, PASSWORD, Api, fresh_database, generate  # noqa: E402
from mailroom.testing.servers import process_tree  # noqa: E402

DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/mailroom_scalebench"
DEFAULT_REDIS = "redis://127.0.0.1:6379/9"
TICK = os.sysconf("SC_CLK_TCK")
# This tree's code, whatever the venv has installed (the venv's `mailroom` script runs its own checkout's).
MAILROOM = [sys.executable, "-m", "mailroom.cli"]


# ---------------------------------------------------------------- processes: CPU and memory


def _stat(pid: int) -> tuple[int, int]:
    """(parent pid, CPU ticks: utime + stime + those of its reaped children)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[1]), sum(int(x) for x in fields[11:15])


def _cmdline(pid: int) -> bytes:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read()


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class Meter:
    """Samples the CPU ticks of named process trees (serve, each worker) and of the PostgreSQL
    backends serving ``database``, and the PSS of each tree. A process that exits between two
    samples keeps the ticks last seen (backends come and go with connections)."""

    roots: dict[str, int]
    database: str
    interval: float = 1.0
    ticks: dict[int, int] = field(default_factory=dict)
    kind: dict[int, str] = field(default_factory=dict)
    base: dict[int, int] = field(default_factory=dict)
    peak_pss: dict[str, int] = field(default_factory=dict)
    _other: set[int] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> None:
        parents: dict[int, int] = {}
        ticks: dict[int, int] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    parents[int(entry)], ticks[int(entry)] = _stat(int(entry))
                except (OSError, ValueError, IndexError):
                    continue
        trees: dict[str, set[int]] = {}
        for name, root in self.roots.items():
            trees[name] = process_tree(root, parents) & set(ticks)
            for pid in trees[name]:
                if pid not in self.kind:
                    self.kind[pid] = name if pid == root else f"{name} {self._child_kind(pid, parents.get(pid) == root)}"
        for pid in ticks:
            if pid not in self.kind and pid not in self._other:
                try:
                    cmd = _cmdline(pid)
                except OSError:
                    continue
                if cmd.startswith(b"postgres: ") and f" {self.database} ".encode() in cmd:
                    self.kind[pid] = "postgres backends"
                elif not cmd.startswith(b"/usr/lib/postgresql"):  # a backend not yet named is looked at again
                    self._other.add(pid)
        for pid in self.kind:
            if pid in ticks:
                self.ticks[pid] = max(self.ticks.get(pid, 0), ticks[pid])
        for name, tree in trees.items():
            pss = sum(_pss_kb(pid) for pid in tree)
            self.peak_pss[name] = max(self.peak_pss.get(name, 0), pss)

    @staticmethod
    def _child_kind(pid: int, direct: bool) -> str:
        """A worker's spawned children: its Celery process (``mailroom worker`` runs Celery in a
        child of its own) and, under that, the parse workers."""
        try:
            cmd = _cmdline(pid)
        except OSError:
            return "child"
        if b"resource_tracker" in cmd:
            return "resource tracker"
        if b"spawn_main" in cmd:
            return "celery (pipeline)" if direct else "parse workers"
        return "child"

    def start(self) -> None:
        """Baseline now: start-up (migrations, imports) is not the work measured."""
        self.sample()
        self.base = dict(self.ticks)
        self.peak_pss.clear()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()

    def cpu_by_kind(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for pid, t in self.ticks.items():
            kind = self.kind[pid]
            out[kind] = out.get(kind, 0.0) + (t - self.base.get(pid, 0)) / TICK
        return dict(sorted(out.items()))


# ---------------------------------------------------------------- the deployment under test


def _sql(url: str, query: str) -> Any:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(query).fetchone()
        return row[0] if row else None


def _flush_redis(url: str) -> None:
    import redis

    redis.Redis.from_url(url).flushdb()


class Deployment:
    """``mailroom serve`` (web only) + N ``mailroom worker`` on an emptied database and broker."""

    def __init__(self, args: argparse.Namespace, workdir: Path, workers: int) -> None:
        from mailroom.testing.servers import free_port

        workdir.mkdir(parents=True)
        self.workdir, self.database_url = workdir, args.database_url
        fresh_database(args.database_url)
        _flush_redis(args.redis_url)
        self.env = {
            **os.environ,
            "PYTHONPATH": str(ROOT / "src"),
            "MAILROOM_DATA_DIR": str(workdir),
            "MAILROOM_ENCRYPTION_KEYS": "bench:" + "A" * 43,
            "MAILROOM_TRUSTED_AUTHSERV_IDS": MX,
            "DATABASE_URL": args.database_url,
            "MAILROOM_RAW_STORE": "database",
            "MAILROOM_TASKS": "celery",
            "CELERY_BROKER_URL": args.redis_url,
            "MAILROOM_LEASE_SECONDS": str(args.lease_seconds),
        }
        self.port = free_port()
        self.serve = subprocess.Popen(
            [*MAILROOM, "serve", "--port", str(self.port)], env=self.env,
            stdout=subprocess.PIPE, stderr=(workdir / "serve.err").open("w"), text=True, start_new_session=True,
        )
        token = ""
        assert self.serve.stdout is not None
        for line in self.serve.stdout:
            if line.startswith("API token for scripts:"):
                token = line.split(":", 1)[1].strip()
                break
        if not token:
            self.serve.wait(10)
            raise SystemExit(f"mailroom serve did not start:\n{(workdir / 'serve.err').read_text()[-4000:]}")
        threading.Thread(target=self.serve.stdout.read, daemon=True).start()  # keep draining its output
        self.api = Api(f"http://127.0.0.1:{self.port}", token)
        self.workers: list[subprocess.Popen[bytes]] = []
        for i in range(workers):  # started once serve has migrated the database
            with (workdir / f"worker{i}.log").open("w") as out:
                self.workers.append(subprocess.Popen(
                    [*MAILROOM, "worker", "--concurrency", str(args.concurrency)], env=self.env,
                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                ))
        self._wait(lambda: _sql(self.database_url, "SELECT count(*) FROM ingest_enginenode") == workers, 120,
                   "the workers did not register")
        time.sleep(2.0)  # let their parse workers finish starting (not the work measured)
        self.empty_db_bytes = self.database_size()  # migrated, nothing imported
        self.meter = Meter(
            {"serve": self.serve.pid, **{f"worker {i + 1}": w.pid for i, w in enumerate(self.workers)}},
            urllib.parse.urlsplit(args.database_url).path.lstrip("/"),
        )

    def _wait(self, predicate: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            self.check_alive()
            if time.monotonic() > deadline:
                raise SystemExit(f"{what} within {timeout:.0f} s")
            time.sleep(0.5)

    def check_alive(self) -> None:
        for name, proc in [("serve", self.serve), *((f"worker{i}", w) for i, w in enumerate(self.workers))]:
            if proc.poll() is not None:
                log = self.workdir / ("serve.err" if name == "serve" else f"{name}.log")
                raise SystemExit(f"{name} exited ({proc.returncode}):\n{log.read_text()[-4000:]}")

    def add_mailbox(self, email: str, imap_port: int) -> int:
        mb = self.api.call("POST", "/api/v1/mailboxes", {
            "email": email, "imap_host": "127.0.0.1", "imap_port": imap_port, "imap_security": "plain",
            "smtp_host": "127.0.0.1", "smtp_port": 25, "smtp_security": "plain", "password": PASSWORD,
            "sync_roles": ["inbox"],
        })
        return int(mb["id"])

    def database_size(self) -> int:
        return int(_sql(self.database_url, "SELECT pg_database_size(current_database())"))

    def stop(self) -> None:
        for proc in [*self.workers, self.serve]:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in [*self.workers, self.serve]:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


# ---------------------------------------------------------------- part 1: throughput


def _message_id(raw: bytes) -> str:
    head = raw[: raw.find(b"\n\n")]
    return head.split(b"Message-ID: <", 1)[1].split(b">", 1)[0].decode()


def load_mailboxes(dovecot: Any, users: list[str], per_mailbox: int) -> tuple[dict[str, set[str]], int]:
    """Each user gets ``per_mailbox`` generated messages (a seed of its own); returns the
    Message-IDs by user and the bytes loaded."""
    expected: dict[str, set[str]] = {}
    size = 0
    for seed, user in enumerate(users, start=100):
        dovecot.add_user(user, PASSWORD)
        ids: set[str] = set()

        def counted(seed: int = seed, ids: set[str] = ids) -> Iterator[bytes]:
            nonlocal size
            for raw in generate(per_mailbox, seed=seed):
                size += len(raw)
                ids.add(_message_id(raw))
                yield raw

        dovecot.deliver_many(user, counted())
        expected[user] = ids
    return expected, size


def run_throughput(args: argparse.Namespace, dovecot: Any, expected: dict[str, set[str]], workers: int,
                   workdir: Path) -> dict[str, Any]:
    dep = Deployment(args, workdir, workers)
    try:
        total = sum(len(v) for v in expected.values())
        dep.meter.start()
        t0 = time.perf_counter()
        ids = {user: dep.add_mailbox(user, dovecot.imap_port) for user in expected}
        stored_at = 0.0
        deadline = time.monotonic() + args.timeout
        while True:
            linked = sum(dep.api.count(mid) for mid in ids.values())
            if not stored_at and sum(dep.api.count(mid, "any") for mid in ids.values()) >= total:
                stored_at = time.perf_counter() - t0
            if linked >= total:
                secs = time.perf_counter() - t0
                break
            dep.check_alive()
            if time.monotonic() > deadline:
                raise SystemExit(f"{workers} worker(s): {linked} of {total} linked after {args.timeout} s")
            time.sleep(0.5)
        dep.meter.stop()
        for user, mid in ids.items():
            listed = dep.api.message_ids(mid)
            missing = expected[user] - set(listed)
            if missing or len(listed) != len(set(listed)) or len(listed) != len(expected[user]):
                raise SystemExit(f"{user}: {len(missing)} Message-IDs missing, {len(listed) - len(set(listed))} doubled")
        return {
            "workers": workers, "total": total, "secs": secs, "stored_secs": stored_at or secs,
            "cpu": dep.meter.cpu_by_kind(), "pss_mb": {k: v / 1024 for k, v in dep.meter.peak_pss.items()},
            "db_bytes": dep.database_size(), "empty_db_bytes": dep.empty_db_bytes,
        }
    finally:
        dep.stop()


def print_throughput(r: dict[str, Any]) -> None:
    n, total = r["workers"], r["total"]
    print(f"{n} worker(s): {total} messages linked and listed in {r['secs']:.1f} s = {total / r['secs']:.0f} msgs/s "
          f"(all stored, state=any, at {r['stored_secs']:.1f} s = {total / r['stored_secs']:.0f} msgs/s)")
    cpu_total = sum(r["cpu"].values())
    print(f"  CPU {cpu_total:.1f} s = {cpu_total * 1000 / total:.2f} ms a message "
          f"({os.cpu_count()} cores give {os.cpu_count() * r['secs']:.0f} s in that time); by process kind, ms a message:")
    for kind, secs in r["cpu"].items():
        print(f"    {kind:32s} {secs * 1000 / total:7.2f}  ({secs:.1f} s)")
    print("  peak PSS of each process tree: " + ", ".join(f"{k} {v:.0f} MB" for k, v in sorted(r["pss_mb"].items())))
    grown = r["db_bytes"] - r["empty_db_bytes"]
    print(f"  database size (pg_database_size): {r['db_bytes'] / 1e6:.0f} MB ({r['empty_db_bytes'] / 1e6:.0f} MB "
          f"empty) = {grown / total * 10_000 / 1e6:.0f} MB per 10,000 messages")
    sys.stdout.flush()


# ---------------------------------------------------------------- part 2: IDLE latency during a backfill


def _new_mail(user: str, i: int) -> tuple[str, bytes]:
    msg = EmailMessage()
    mid = make_msgid(idstring=f"idle{i}", domain="client.test")
    msg["From"] = "Клиент <client@client.test>"
    msg["To"] = user
    msg["Subject"] = f"Вопрос по счёту {i}"
    msg["Date"] = format_datetime(datetime.now(UTC))
    msg["Message-ID"] = mid
    msg.set_content(f"Добрый день! Сообщение {i}.\n")
    return mid.strip("<>"), msg.as_bytes()


@dataclass
class Probe:
    mailbox: int
    message_id: str
    delivered: float = 0.0
    stored: float | None = None  # listed with state=any
    linked: float | None = None  # listed in the default listing (its state is linked)


def _watch(api: Api, probe: Probe, interval: float, timeout: float) -> None:
    """``--poll-mode mailbox``: poll the message's own mailbox listing (state=any: it shows the
    state) until the message is linked; a thread per message, so the requests grow with the
    messages still waiting (at 10 s of latency, 50 at once: 500 requests a second)."""
    while time.perf_counter() - probe.delivered < timeout:
        page = api.call("GET", f"/api/v1/messages?mailbox={probe.mailbox}&limit=3&state=any&count=none")
        _seen(probe, page["items"], time.perf_counter())
        if probe.linked is not None:
            return
        time.sleep(interval)


def _seen(probe: Probe, items: list[dict[str, Any]], now: float) -> None:
    """Record what a listing answered at ``now`` (when the answer was in: an upper bound of when
    the message became visible, at most one request's time late)."""
    for item in items:
        if item["message_id"] == probe.message_id:
            if probe.stored is None:
                probe.stored = now - probe.delivered
            if item["state"] == "linked" and probe.linked is None:
                probe.linked = now - probe.delivered


class TeamPoller:
    """``--poll-mode team`` (the default): one request every ``interval`` lists the team's newest
    messages (state=any, count=none; the new messages are dated now, the generated ones in 2025, so
    they are the newest), however many messages are waiting. The per-message watchers of
    ``--poll-mode mailbox`` grew with the latency they measured (a request a message every 100 ms,
    each with an exact count), and loaded ``serve`` and the database they measured. A message seen
    linked here is then looked for in its own mailbox's default listing
    (``GET /api/v1/messages?mailbox=<id>``, linked only), which must list it (``confirm``)."""

    def __init__(self, api: Api, interval: float, timeout: float) -> None:
        self.api, self.interval, self.timeout = api, interval, timeout
        self.probes: list[Probe] = []
        self.lock = threading.Lock()
        self.delivering = True
        self.requests = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def add(self, probe: Probe) -> None:
        with self.lock:
            self.probes.append(probe)

    def _pending(self) -> list[Probe]:
        now = time.perf_counter()
        with self.lock:
            return [p for p in self.probes if p.linked is None and now - p.delivered < self.timeout]

    def _run(self) -> None:
        while True:
            pending = self._pending()
            if not pending and not self.delivering:
                return
            started = time.perf_counter()
            if pending:
                limit = min(500, len(pending) + 20)
                page = self.api.call("GET", f"/api/v1/messages?state=any&limit={limit}&count=none")
                self.requests += 1
                now = time.perf_counter()
                for p in pending:
                    _seen(p, page["items"], now)
            time.sleep(max(0.0, self.interval - (time.perf_counter() - started)))

    def join(self) -> None:
        self.delivering = False
        self.thread.join()

    def confirm(self) -> None:
        for p in self.probes:
            if p.linked is None:
                continue
            page = self.api.call("GET", f"/api/v1/messages?mailbox={p.mailbox}&limit=5&count=none")
            if p.message_id not in {m["message_id"] for m in page["items"]}:
                raise SystemExit(f"{p.message_id} was listed linked, but not by its mailbox {p.mailbox}")


def _pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


def run_latency(args: argparse.Namespace, dovecot: Any, workdir: Path) -> None:
    users = [f"idle{i:03d}@company.test" for i in range(args.idle_mailboxes)]
    backfill_user = "backfill@company.test"
    t = time.perf_counter()
    for i, user in enumerate(users):
        dovecot.add_user(user, PASSWORD)
        dovecot.deliver_many(user, generate(args.idle_messages, seed=1000 + i))
    expected, size = load_mailboxes(dovecot, [backfill_user], args.backfill)
    print(f"loaded {len(users)} mailboxes of {args.idle_messages} messages and one of {args.backfill} "
          f"({size / 1e6:.0f} MB) in {time.perf_counter() - t:.0f} s", flush=True)
    dep = Deployment(args, workdir, 2)
    try:
        ids = [dep.add_mailbox(user, dovecot.imap_port) for user in users]

        def all_idle() -> bool:
            boxes = dep.api.call("GET", "/api/v1/mailboxes")
            ok = [b for b in boxes if b["health"] == "ok" and all(
                f["stored_count"] == f["server_count"] for f in b["folders"] if f["selected"])]
            return len(ok) == len(ids)

        t = time.perf_counter()
        dep._wait(all_idle, args.timeout, f"the {len(ids)} mailboxes were not all synced")
        print(f"{len(ids)} mailboxes synced (health ok) {time.perf_counter() - t:.1f} s after they were added", flush=True)
        time.sleep(3.0)  # into IDLE
        dep.meter.start()
        backfill = dep.add_mailbox(backfill_user, dovecot.imap_port)
        total = args.backfill
        dep._wait(lambda: dep.api.count(backfill, "any") > 0, 120, "the backfill did not start")
        started = time.perf_counter()
        at_first = (dep.api.count(backfill, "any"), dep.api.count(backfill))
        probes: list[Probe] = []
        watchers: list[threading.Thread] = []
        poller = TeamPoller(dep.api, args.poll, 120.0) if args.poll_mode == "team" else None
        gap = 1.0 / args.rate
        next_at = time.perf_counter()
        for i, (mid, user) in enumerate(zip(ids, users, strict=True)):
            time.sleep(max(0.0, next_at - time.perf_counter()))
            next_at += gap
            message_id, raw = _new_mail(user, i)
            dovecot.deliver_lmtp(user, [raw])
            probe = Probe(mid, message_id, time.perf_counter())
            probes.append(probe)
            if poller is not None:
                poller.add(probe)
                continue
            w = threading.Thread(target=_watch, args=(dep.api, probe, args.poll, 120.0), daemon=True)
            w.start()
            watchers.append(w)
        for w in watchers:
            w.join()
        if poller is not None:
            poller.join()
            poller.confirm()
        last_listed = time.perf_counter()
        at_last = (dep.api.count(backfill, "any"), dep.api.count(backfill))
        dep._wait(lambda: dep.api.count(backfill) >= total, args.timeout, "the backfill did not finish")
        backfill_secs = time.perf_counter() - started
        dep.meter.stop()
        missing = expected[backfill_user] - set(dep.api.message_ids(backfill))
        if missing:
            raise SystemExit(f"backfill: {len(missing)} Message-IDs missing")
    finally:
        dep.stop()
    lost = [p for p in probes if p.linked is None]
    print(f"new mail at {len(ids)} IDLE mailboxes, 2 workers, during a {total}-message backfill: one message "
          f"delivered (LMTP) to each at {args.rate:g}/s, "
          + (f"the team's newest listed every {args.poll * 1000:.0f} ms ({poller.requests} requests; each seen "
             "linked then found in its mailbox's default listing)" if poller is not None
             else f"its mailbox polled every {args.poll * 1000:.0f} ms per message"))
    for what, values in (("listed, state=any", [p.stored for p in probes if p.stored is not None]),
                         ("listed, default (linked)", [p.linked for p in probes if p.linked is not None])):
        if values:
            print(f"  {what:25s}: p50 {_pct(values, 50) * 1000:6.0f} ms  p95 {_pct(values, 95) * 1000:6.0f} ms  "
                  f"p99 {_pct(values, 99) * 1000:6.0f} ms  max {max(values) * 1000:6.0f} ms  ({len(values)} messages)")
    linked = [p.linked for p in probes if p.linked is not None]
    if linked:
        print(f"  target p99 <= 2000 ms (linked): {'met' if _pct(linked, 99) <= 2.0 else 'NOT met'}")
    if lost:
        print(f"  {len(lost)} messages not linked within 120 s")
    running = at_last[1] < total
    print(f"  backfill: {at_first[0]} stored / {at_first[1]} linked at the first delivery, {at_last[0]} stored / "
          f"{at_last[1]} linked when the last new message was listed ({last_listed - started:.0f} s in); "
          f"{'still running throughout' if running else 'NOT running throughout (it finished first)'}; "
          f"all {total} linked {backfill_secs:.0f} s after it started")
    cpu = dep.meter.cpu_by_kind()
    print("  CPU s during the backfill, by process kind: " + ", ".join(f"{k} {v:.1f}" for k, v in cpu.items()))
    print("  peak PSS: " + ", ".join(f"{k} {v / 1024:.0f} MB" for k, v in sorted(dep.meter.peak_pss.items())))


# ---------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mailboxes", type=int, default=8)
    ap.add_argument("--messages-per-mailbox", type=int, default=2000)
    ap.add_argument("--idle-mailboxes", type=int, default=200)
    ap.add_argument("--idle-messages", type=int, default=3, help="messages already in each IDLE mailbox")
    ap.add_argument("--backfill", type=int, default=20000)
    ap.add_argument("--rate", type=float, default=5.0, help="new messages a second, one to each IDLE mailbox")
    ap.add_argument("--poll", type=float, default=0.1, help="seconds between polls")
    ap.add_argument("--poll-mode", choices=["team", "mailbox"], default="team",
                    help="team: one request lists the team's newest messages for all that wait (default); "
                    "mailbox: a poller per message, of its own mailbox")
    ap.add_argument("--database-url", default=DEFAULT_DB)
    ap.add_argument("--redis-url", default=DEFAULT_REDIS)
    ap.add_argument("--concurrency", type=int, default=2, help="Celery threads of each worker")
    ap.add_argument("--lease-seconds", type=int, default=60)
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-latency", action="store_true")
    args = ap.parse_args()
    if not args.database_url.startswith("postgres"):
        raise SystemExit("scale-out runs on PostgreSQL: --database-url postgres://...")

    from mailroom.testing.servers import Dovecot

    workdir = Path(tempfile.mkdtemp(prefix="mailroom-scaleout-"))
    workdir.chmod(0o755)
    dovecot = Dovecot(workdir / "servers").start()
    print(f"{os.cpu_count()} cores, {os.uname().nodename}; PostgreSQL (raw bytes in the database), Redis broker "
          f"{args.redis_url}; worker: --pool threads --concurrency {args.concurrency}", flush=True)
    try:
        if not args.skip_throughput:
            users = [f"tp{i}@company.test" for i in range(args.mailboxes)]
            t = time.perf_counter()
            expected, size = load_mailboxes(dovecot, users, args.messages_per_mailbox)
            total = sum(len(v) for v in expected.values())
            print(f"throughput: {args.mailboxes} mailboxes x {args.messages_per_mailbox} = {total} messages "
                  f"({size / 1e6:.0f} MB), loaded in {time.perf_counter() - t:.0f} s", flush=True)
            results = []
            for n in (1, 2):
                r = run_throughput(args, dovecot, expected, n, workdir / f"throughput-{n}")
                print_throughput(r)
                results.append(r)
            print(f"speed-up 1 -> 2 workers: {results[0]['secs'] / results[1]['secs']:.2f}x", flush=True)
        if not args.skip_latency:
            run_latency(args, dovecot, workdir / "latency")
    except BaseException:
        dovecot.stop()
        print(f"failed: the logs are kept in {workdir}", file=sys.stderr)
        raise
    dovecot.stop()
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
