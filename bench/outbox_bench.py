"""Outbox throughput: compose -> durable row -> accepted by the SMTP server -> marked sent (+ stored),
beside bare smtplib sending prebuilt messages over the same number of connections, into the same
local aiosmtpd sink (run in its own process).

Usage: .venv/bin/python bench/outbox_bench.py [--messages 4000] [--connections 4]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import smtplib
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

BODY = ("Hello, following up on our call: here is the proposal we discussed, with the prices and "
        "the delivery dates. Let me know if anything is unclear.\n") * 33  # ~5 KB


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _sink(port: int, counter: Any, ready: Any, stop: Any) -> None:
    """aiosmtpd, the reference Python SMTP server: ~1.5k msgs/s on one core, so it caps both runs."""
    from aiosmtpd.controller import Controller

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            with counter.get_lock():
                counter.value += 1
            return "250 2.0.0 queued"

    controller = Controller(Handler(), hostname="127.0.0.1", port=port, decode_data=False)
    controller.start()
    ready.set()
    stop.wait()
    controller.stop()


def _fast_sink(port: int, counter: Any, ready: Any, stop: Any) -> None:
    """A minimal SMTP responder on raw asyncio (no parsing, no envelope objects): answers EHLO,
    MAIL, RCPT, DATA and QUIT and counts the messages, so the sink is not what is measured."""
    import asyncio

    class Responder(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            self.buf = b""
            self.in_data = False
            transport.write(b"220 sink ESMTP\r\n")

        def data_received(self, data: bytes) -> None:
            buf = self.buf + data
            out: list[bytes] = []
            quit_ = False
            while True:
                if self.in_data:
                    end = buf.find(b"\r\n.\r\n")
                    if end < 0:
                        break
                    buf = buf[end + 5:]
                    self.in_data = False
                    with counter.get_lock():
                        counter.value += 1
                    out.append(b"250 2.0.0 queued\r\n")
                    continue
                end = buf.find(b"\r\n")
                if end < 0:
                    break
                verb = buf[:4].upper()
                buf = buf[end + 2:]
                if verb == b"EHLO":
                    out.append(b"250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 52428800\r\n")
                elif verb == b"DATA":
                    self.in_data = True
                    buf = b"\r\n" + buf  # the terminator may follow the 354 at once (empty body)
                    out.append(b"354 go ahead\r\n")
                elif verb == b"QUIT":
                    out.append(b"221 bye\r\n")
                    quit_ = True
                    break
                else:
                    out.append(b"250 OK\r\n")
            self.buf = buf
            if out:
                self.transport.write(b"".join(out))
            if quit_:
                self.transport.close()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Responder, "127.0.0.1", port, backlog=128)
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.1)
        server.close()

    asyncio.run(main())


def _setup_django(data_dir: str) -> None:
    os.environ["MAILROOM_DATA_DIR"] = data_dir
    os.environ.setdefault("MAILROOM_ENCRYPTION_KEYS", "bench:" + "A" * 43)
    os.environ["DJANGO_SETTINGS_MODULE"] = "mailroom.config.settings"
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, skip_checks=True)


def bench_mailroom(n: int, conns: int, port: int, counter: Any) -> tuple[float, int]:
    from mailroom.accounts.models import Team
    from mailroom.mailboxes.models import Mailbox
    from mailroom.outbound.models import OutboxMessage
    from mailroom.outbound.services import ComposeInput, new_worker_id, outbox_create_batch, outbox_send_due

    team = Team.objects.create(name=f"bench-{time.time()}")
    mailboxes = []
    for i in range(conns):
        mb = Mailbox(team=team, name=f"mb{i}", email=f"sales{i}@company.test", display_name="Acme Sales",
                     imap_host="127.0.0.1", imap_username="x", smtp_host="127.0.0.1", smtp_port=port,
                     smtp_security="plain", provider_saves_sent=True)
        mb.save()
        mailboxes.append(mb)
    start_count = counter.value
    worker = new_worker_id()
    t0, c0 = time.perf_counter(), time.process_time()
    batch = 250  # one durable commit per compose batch (outbox_create_batch)
    for start in range(0, n, batch):
        for m, mb in enumerate(mailboxes):
            outbox_create_batch(user=None, mailbox=mb, items=[
                ComposeInput(to=(f"Client {i} <client{i}@client.test>",), subject=f"Proposal #{i}", text=BODY,
                             idempotency_key=f"bench-{i}")
                for i in range(start, min(start + batch, n)) if i % conns == m])
    t_composed, c_composed = time.perf_counter(), time.process_time()
    while outbox_send_due(limit=1000, parallel=conns, worker_id=worker).claimed:
        pass
    t1, c1 = time.perf_counter(), time.process_time()
    sent = OutboxMessage.objects.filter(team=team, state="sent").count()
    assert counter.value - start_count == n, (counter.value - start_count, n)
    print(f"  compose+durable: {n / (t_composed - t0):,.0f} msgs/s ({(c_composed - c0) / n * 1e6:,.0f} us CPU/msg); "
          f"send+mark sent+store: {n / (t1 - t_composed):,.0f} msgs/s ({(c1 - c_composed) / n * 1e6:,.0f} us CPU/msg)")
    return n / (t1 - t0), sent


def bench_smtplib(n: int, conns: int, port: int, counter: Any) -> float:
    from datetime import UTC, datetime

    from mailroom.outbound.compose import Addr, Draft, build_message

    msgs = [build_message(Draft(from_=Addr("sales@company.test", "Acme Sales"),
                                to=(Addr(f"client{i}@client.test", f"Client {i}"),), subject=f"Proposal #{i}",
                                message_id=f"bench{i}@company.test", date=datetime.now(UTC), text=BODY))
            for i in range(n)]
    start_count = counter.value

    def run(chunk: list[bytes]) -> None:
        with smtplib.SMTP("127.0.0.1", port) as smtp:
            for i, raw in enumerate(chunk):
                smtp.sendmail("sales@company.test", [f"client{i}@client.test"], raw)

    chunks = [msgs[i::conns] for i in range(conns)]
    t0, c0 = time.perf_counter(), time.process_time()
    threads = [threading.Thread(target=run, args=(c,)) for c in chunks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    t1, c1 = time.perf_counter(), time.process_time()
    assert counter.value - start_count == n
    print(f"  bare smtplib: {(c1 - c0) / n * 1e6:,.0f} us CPU/msg")
    return n / (t1 - t0)


def _start_sink(kind: str) -> tuple[int, Any, Any, Any]:
    port = _free_port()
    ctx = mp.get_context("spawn")
    counter, ready, stop = ctx.Value("q", 0), ctx.Event(), ctx.Event()
    target = _fast_sink if kind == "fast" else _sink
    proc = ctx.Process(target=target, args=(port, counter, ready, stop), daemon=True)
    proc.start()
    if not ready.wait(20):
        raise RuntimeError(f"{kind} sink did not start")
    return port, counter, stop, proc


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=4000)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--sink", choices=["fast", "aiosmtpd", "both"], default="both",
                        help="fast: a minimal asyncio responder (not the bottleneck); aiosmtpd: the reference server")
    args = parser.parse_args()
    sinks = ["fast", "aiosmtpd"] if args.sink == "both" else [args.sink]
    rows: list[tuple[str, float, float]] = []
    with tempfile.TemporaryDirectory(prefix="mr-outbox-bench-") as data_dir:
        _setup_django(data_dir)
        print(f"outbox benchmark: {args.messages} messages of ~{len(BODY) // 1024} KB, {args.connections} SMTP "
              f"connections, sink in its own process on 127.0.0.1, SQLite (WAL, synchronous=FULL), {os.cpu_count()} cores")
        for kind in sinks:
            port, counter, stop, proc = _start_sink(kind)
            try:
                print(f"[{kind} sink]")
                bare = bench_smtplib(args.messages, args.connections, port, counter)
                mr, sent = bench_mailroom(args.messages, args.connections, port, counter)
                print(f"  mailroom outbox (compose -> durable -> accepted -> marked sent + stored): {mr:,.0f} msgs/s "
                      f"({sent} sent)")
                print(f"  bare smtplib, prebuilt messages, {args.connections} connections:                {bare:,.0f} msgs/s")
                print(f"  ratio mailroom / bare smtplib: {mr / bare:.2f}")
                rows.append((kind, mr, bare))
            finally:
                stop.set()
                proc.join(10)
    best = max(mr for _, mr, _ in rows)
    print(f"target >= 1,000 msgs/s: {'met' if best >= 1000 else 'NOT met'} (best {best:,.0f} msgs/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
