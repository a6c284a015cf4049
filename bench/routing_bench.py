"""Routing + linking benchmark on PostgreSQL, and thread view / contact timeline latency over HTTP.

(a) rate: generate N stored+parsed messages (threads with In-Reply-To/References chains, outgoing
    replies, ~300 clients at 40 companies + free-mail senders, existing contacts and open deals), run
    ``messages_link`` over them in date order (as ``link_pending`` does) and print messages/s.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/mailroom_bench .venv/bin/python bench/routing_bench.py --messages 20000
    MAILROOM_DATA_DIR=/tmp/mr-bench .venv/bin/python bench/routing_bench.py --sqlite --messages 20000  # embedded

``--profile`` prints the top of a cProfile of the linking run.

(b) latency: bulk-generate a linked corpus (COPY-speed bulk inserts), serve the WSGI app with a real
    HTTP server in a thread, and time GET /threads/{id} and /contacts/{id}/timeline: p50/p95/p99.

    ... bench/routing_bench.py --latency --messages 1000000
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import statistics
import sys
import threading
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/mailroom_bench"
T0 = datetime(2024, 1, 1, tzinfo=UTC)


def setup(reset: bool, sqlite: bool = False) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mailroom.config.settings")
    data_dir = os.environ.setdefault("MAILROOM_DATA_DIR", "/tmp/mr-bench")
    if sqlite:
        # The embedded default: a SQLite file (WAL, synchronous=FULL) inside MAILROOM_DATA_DIR.
        os.environ.pop("DATABASE_URL", None)
        db = Path(data_dir) / "mailroom.sqlite3"
        if reset:
            for suffix in ("", "-wal", "-shm"):
                Path(str(db) + suffix).unlink(missing_ok=True)
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        import django
        from django.core.management import call_command

        django.setup()
        call_command("migrate", verbosity=0)
        return
    url = os.environ.setdefault("DATABASE_URL", DEFAULT_DB)
    import psycopg

    base, _, name = url.rpartition("/")
    with psycopg.connect(base + "/postgres", autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists and reset:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            exists = None
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def _h(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()


def world(seed: int = 7) -> dict[str, Any]:
    from mailroom.accounts.models import Team
    from mailroom.crm.models import Company, CompanyDomain, Contact, ContactEmail, Deal
    from mailroom.mailboxes.models import Mailbox

    team = Team.objects.create(name=f"bench-{time.time_ns()}")
    mailbox = Mailbox.objects.create(
        team=team, name="Sales", email=f"sales{team.pk}@company.test", imap_host="x", imap_username="x"
    )
    rnd = random.Random(seed)
    companies = Company.objects.bulk_create([Company(team=team, name=f"Client {i}") for i in range(40)])
    CompanyDomain.objects.bulk_create(
        [CompanyDomain(team=team, company=c, domain=f"client{i}.test") for i, c in enumerate(companies)]
    )
    # Half of the clients are already contacts; some have open deals (a few two: ambiguous).
    contacts = Contact.objects.bulk_create(
        [Contact(team=team, name=f"Client {i}", company=companies[i % 40]) for i in range(0, 300, 2)]
    )
    ContactEmail.objects.bulk_create(
        [
            ContactEmail(
                team=team,
                contact=c,
                address=f"client{i * 2}@client{(i * 2) % 40}.test",
                canonical=f"client{i * 2}@client{(i * 2) % 40}.test",
            )
            for i, c in enumerate(contacts)
        ]
    )
    deals = [
        Deal(team=team, title=f"Deal {i}", contact=c) for i, c in enumerate(contacts) if rnd.random() < 0.4
    ]
    deals += [Deal(team=team, title=f"Deal 2-{i}", contact=c) for i, c in enumerate(contacts[:10])]
    Deal.objects.bulk_create(deals)
    return {"team": team, "mailbox": mailbox}


def generate_parsed(team: Any, mailbox: Any, n: int, seed: int = 7, state: str = "parsed") -> list[int]:
    """N messages as the parse stage leaves them: Message (PARSED) + Participants + Source."""
    from django.db import transaction

    from mailroom.conversations.models import Message, Participant, Source

    rnd = random.Random(seed)
    recent: list[tuple[str, list[str], str, int]] = []  # (message-id, references, subject, client)
    pks: list[int] = []
    chunk = 5000
    now = datetime.now(UTC)
    me = mailbox.email
    for start in range(0, n, chunk):
        msgs: list[Message] = []
        people: list[list[tuple[str, str]]] = []
        for i in range(start, min(n, start + chunk)):
            reply = recent and rnd.random() < 0.6
            if reply:
                parent, refs, subject, client = rnd.choice(recent)
                refs = [*refs, parent][-10:]
                subject = "Re: " + subject.removeprefix("Re: ")
            else:
                client = rnd.randrange(400)
                parent, refs, subject = "", [], f"Request {i} about order {rnd.randrange(10**6)}"
            if client >= 300:
                caddr = f"person{client}@gmail.com"
            else:
                caddr = f"client{client}@client{client % 40}.test"
            outgoing = reply and rnd.random() < 0.5
            frm, to = (me, caddr) if outgoing else (caddr, me)
            mid = f"m{i}.{seed}@{'company.test' if outgoing else 'client.test'}"
            msgs.append(
                Message(
                    team=team,
                    message_id=mid,
                    message_id_hash=_h(mid),
                    content_hash=_h("c" + mid),
                    size=2000,
                    subject=subject,
                    from_address=frm,
                    date=T0 + timedelta(minutes=3 * i),
                    received_at=now,
                    in_reply_to=[parent] if parent else [],
                    references=refs,
                    direction="outgoing" if outgoing else "incoming",
                    state=state,
                    auth={"dkim": "pass", "dmarc": "pass", "dkim_domains": [frm.split("@")[1]]}
                    if rnd.random() < 0.7
                    else {},
                    routing_headers={},
                )
            )
            people.append(
                [("from", frm), ("to", to)]
                + ([("cc", f"boss{client % 40}@client{client % 40}.test")] if rnd.random() < 0.2 else [])
            )
            recent.append((mid, refs, subject, client))
            if len(recent) > 3000:
                recent.pop(0)
        with transaction.atomic():
            created = Message.objects.bulk_create(msgs, batch_size=5000)
            Participant.objects.bulk_create(
                [
                    Participant(message_id=m.pk, role=r, address=a)
                    for m, ps in zip(created, people, strict=True)
                    for r, a in ps
                ],
                batch_size=10000,
            )
            Source.objects.bulk_create(
                [
                    Source(
                        message_id=m.pk, mailbox=mailbox, kind="lmtp", key=f"bench:{team.pk}:{m.message_id}"
                    )
                    for m in created
                ],
                batch_size=10000,
            )
        pks.extend(m.pk for m in created)
    return pks


class _QueryTimer:
    """Time spent in the database driver per statement shape (the first words of the SQL)."""

    def __init__(self) -> None:
        self.spent: dict[str, list[float]] = {}

    def __call__(self, execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        t = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            key = " ".join(sql.split())[:90]
            entry = self.spent.setdefault(key, [0.0, 0])
            entry[0] += time.perf_counter() - t
            entry[1] += 1

    def report(self, elapsed: float) -> None:
        total = sum(v[0] for v in self.spent.values())
        print(
            f"database time {total:.2f}s of {elapsed:.2f}s ({sum(v[1] for v in self.spent.values())} statements)"
        )
        for key, (spent, count) in sorted(self.spent.items(), key=lambda kv: -kv[1][0])[:12]:
            print(f"  {spent:6.2f}s {count:5d}x  {key}")


def run_rate(n: int, batch: int, profile: bool = False) -> None:
    from django.db import connection

    from mailroom.conversations.linking import messages_link
    from mailroom.conversations.models import Message, Thread
    from mailroom.crm.models import Contact

    w = world()
    t = time.perf_counter()
    pks = generate_parsed(w["team"], w["mailbox"], n)
    print(f"generated {len(pks)} parsed messages in {time.perf_counter() - t:.1f}s")
    ordered = list(Message.objects.filter(pk__in=pks).order_by("date", "id").values_list("id", flat=True))
    prof = None
    if profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    timer = _QueryTimer()
    t, cpu = time.perf_counter(), time.process_time()
    with connection.execute_wrapper(timer):
        for start in range(0, len(ordered), batch):
            messages_link(message_pks=ordered[start : start + batch])
    elapsed, cpu = time.perf_counter() - t, time.process_time() - cpu
    if prof is not None:
        import pstats

        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(35)
    timer.report(elapsed)
    team = w["team"]
    print(
        f"routing+linking: {n} messages in {elapsed:.2f}s = {n / elapsed:,.0f} msgs/s "
        f"(batch {batch}, {connection.vendor}; this process's CPU {cpu:.2f}s)"
    )
    print(
        f"  threads {Thread.objects.filter(team=team).count()}, contacts {Contact.objects.filter(team=team).count()}, "
        f"unverified {Thread.objects.filter(team=team, verification='unverified').count()}, "
        f"on deals {Thread.objects.filter(team=team, deal__isnull=False).count()}"
    )
    t = time.perf_counter()
    for start in range(0, len(ordered), batch):
        messages_link(message_pks=ordered[start : start + batch])
    elapsed2 = time.perf_counter() - t
    print(f"relink (idempotent replay): {n / elapsed2:,.0f} msgs/s")


def bulk_linked(n: int) -> dict[str, Any]:
    """A linked corpus straight into the tables (threads, messages, participants, timeline rows)."""
    from django.db import connection, transaction

    from mailroom.conversations.models import Message, MessageContact, Participant, Thread
    from mailroom.crm.models import ContactEmail

    w = world()
    team, mailbox = w["team"], w["mailbox"]
    contacts = dict(ContactEmail.objects.filter(team=team).values_list("address", "contact_id"))
    rnd = random.Random(11)
    per_thread = 8
    now = datetime.now(UTC)
    chunk = 20000
    t = time.perf_counter()
    thread_ids: list[int] = []
    for start in range(0, n, chunk):
        size = min(chunk, n - start)
        with transaction.atomic():
            threads = Thread.objects.bulk_create(
                [
                    Thread(
                        team=team,
                        subject=f"T{start + k}",
                        normalized_subject=f"t{start + k}",
                        message_count=per_thread,
                    )
                    for k in range(0, size, per_thread)
                ],
                batch_size=5000,
            )
            thread_ids.extend(x.pk for x in threads)
            msgs = []
            who = []
            for k in range(size):
                i = start + k
                client = rnd.randrange(300)
                caddr = f"client{client}@client{client % 40}.test"
                msgs.append(
                    Message(
                        team=team,
                        message_id=f"l{i}@b",
                        message_id_hash=_h(f"l{i}@b{team.pk}"),
                        content_hash=_h(f"c{i}"),
                        subject="Re: x",
                        from_address=caddr,
                        date=T0 + timedelta(seconds=30 * i),
                        received_at=now,
                        state="linked",
                        thread_id=threads[k // per_thread].pk,
                        routing_headers={},
                        routing={},
                    )
                )
                who.append(caddr)
            created = Message.objects.bulk_create(msgs, batch_size=10000)
            Participant.objects.bulk_create(
                [
                    p
                    for m, a in zip(created, who, strict=True)
                    for p in (
                        Participant(message_id=m.pk, role="from", address=a, contact_id=contacts.get(a)),
                        Participant(message_id=m.pk, role="to", address=mailbox.email),
                    )
                ],
                batch_size=20000,
            )
            MessageContact.objects.bulk_create(
                [
                    MessageContact(team=team, contact_id=contacts[a], message_id=m.pk, date=m.date or T0)
                    for m, a in zip(created, who, strict=True)
                    if a in contacts
                ],
                batch_size=20000,
            )
        if start // chunk % 10 == 0:
            print(f"  {start + size:,} messages ({time.perf_counter() - t:.0f}s)", flush=True)
    with connection.cursor() as cur:
        cur.execute("ANALYZE")
    print(f"bulk-generated {n:,} linked messages in {time.perf_counter() - t:.0f}s")
    return {"team": team, "threads": thread_ids, "contacts": list(set(contacts.values()))}


def run_latency(n: int, requests: int) -> None:
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    from django.contrib.auth import get_user_model

    from mailroom.accounts.models import Membership
    from mailroom.accounts.services import token_create
    from mailroom.config.wsgi import application

    data = bulk_linked(n)
    user = get_user_model().objects.create_user(username=f"bench{time.time_ns()}", password="x" * 12)
    Membership.objects.create(user=user, team=data["team"])
    token = token_create(user=user)

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    class Server(WSGIServer):
        daemon_threads = True

    httpd = make_server("127.0.0.1", 0, application, server_class=Server, handler_class=Quiet)
    port = httpd.server_port
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    rnd = random.Random(3)

    def timed(url: str) -> float:
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}{url}", headers={"Authorization": f"Bearer {token}"}
        )
        t = time.perf_counter()
        with urllib.request.urlopen(req) as resp:  # noqa: S310 - loopback benchmark
            resp.read()
            assert resp.status == 200
        return (time.perf_counter() - t) * 1000

    for name, make in (
        ("thread view", lambda: f"/api/v1/threads/{rnd.choice(data['threads'])}"),
        ("contact timeline", lambda: f"/api/v1/contacts/{rnd.choice(data['contacts'])}/timeline?limit=50"),
    ):
        for _ in range(20):
            timed(make())  # warm-up
        samples = sorted(timed(make()) for _ in range(requests))
        q = statistics.quantiles(samples, n=100)
        print(f"{name:17s} p50 {q[49]:.1f} ms  p95 {q[94]:.1f} ms  p99 {q[98]:.1f} ms  ({requests} requests)")
    httpd.shutdown()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--batch", type=int, default=1000, help="messages per messages_link call")
    ap.add_argument("--latency", action="store_true", help="measure API latency over a bulk-generated corpus")
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--reset", action="store_true", help="drop and recreate the benchmark database")
    ap.add_argument("--sqlite", action="store_true", help="the embedded SQLite default instead of PostgreSQL")
    ap.add_argument("--profile", action="store_true", help="cProfile the linking run")
    args = ap.parse_args()
    setup(args.reset, args.sqlite)
    if args.latency:
        run_latency(args.messages, args.requests)
    else:
        run_rate(args.messages, args.batch, args.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
