"""`mailroom serve`, `mailroom demo`, `mailroom migrate`, `mailroom keys generate`."""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import sys
import threading
from typing import Any

from mailroom.cli import setup_django


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = sub.add_parser(
        "serve", help="run web UI, REST API, sync engine and workers in one process "
        "(MAILROOM_TASKS=celery: web UI and API only; 'mailroom worker' processes sync)",
    )
    serve.add_argument("--host", default=os.environ.get("MAILROOM_HOST", "127.0.0.1"))
    serve.add_argument("--port", type=int, default=int(os.environ.get("MAILROOM_PORT", "8025")))
    serve.add_argument("--no-sync", action="store_true", help="web and API only")
    serve.add_argument("--threads", type=int, default=8, help="web server threads")
    serve.set_defaults(handler=_serve)

    demo = sub.add_parser("demo", help="serve with a local IMAP/SMTP sandbox and sample mail already connected")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8025)
    demo.set_defaults(handler=_demo)

    worker = sub.add_parser(
        "worker", help="run a sync engine, the outbox sender and a Celery worker for the pipeline (MAILROOM_TASKS=celery)"
    )
    worker.add_argument("--concurrency", type=int, default=os.cpu_count() or 1)
    worker.add_argument(
        "--pool", default="threads", choices=["threads", "solo", "prefork"],
        help="threads (default) or solo: tasks run in this process and parse in its parse worker processes, "
        "under the hard deadline (MAILROOM_PARSE_DEADLINE); prefork: Celery's children parse in-process, "
        "without it (they may not start processes)",
    )
    worker.add_argument("--loglevel", default="WARNING")
    worker.set_defaults(handler=_worker)

    mig = sub.add_parser("migrate", help="create or upgrade the database")
    mig.set_defaults(handler=_migrate)

    keys = sub.add_parser("keys", help="encryption keys for secrets at rest")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    gen = ksub.add_parser("generate", help="print a new key spec for MAILROOM_ENCRYPTION_KEYS")
    gen.add_argument("--kid", default=None)
    gen.set_defaults(handler=_keys_generate)


def _keys_generate(args: argparse.Namespace) -> int:
    setup_django()
    from mailroom.core.crypto import generate_key_spec

    print(generate_key_spec(args.kid))
    return 0


def prepare() -> None:
    """Migrate, and create the key file on a fresh install. No user is created here: the first
    administrator is made by :func:`first_admin` once the server is listening, so that its password
    is printed to whoever started it (a ``migrate`` or a start that cannot listen keeps nothing back)."""
    from django.core.management import call_command

    from mailroom.core import crypto

    db_is_new = not _db_has_tables()
    call_command("migrate", interactive=False, verbosity=0)
    if db_is_new:
        crypto.ensure_key_file()
    crypto.keyring()  # refuses with a clear message when the key is missing


def first_admin() -> dict[str, str]:
    """On an installation without users: create the administrator (and an API token) and return
    {"username", "password", "token"} to be shown this once; otherwise {}."""
    from django.contrib.auth import get_user_model

    if get_user_model().objects.exists():
        return {}
    from mailroom.accounts.services import token_create, user_create

    password = os.environ.get("MAILROOM_ADMIN_PASSWORD") or secrets.token_urlsafe(12)
    user = user_create(username="admin", password=password, email="", team_name="Default", superuser=True)
    return {"username": user.username, "password": password, "token": token_create(user=user, name="first start")}


def _db_has_tables() -> bool:
    from django.db import connection

    return "accounts_team" in connection.introspection.table_names()


class Background:
    """What a process runs beside its web server or Celery worker: the sync engine (its share of
    the mailboxes, under leases), the outbox sender thread and the webhook delivery thread."""

    def __init__(self) -> None:
        from mailroom.ingest.engine import SyncEngine
        from mailroom.outbound.tasks import run_outbox_worker
        from mailroom.webhooks.tasks import run_webhook_worker

        self.stop_event = threading.Event()
        self.engine = SyncEngine()
        self.outbox = threading.Thread(target=run_outbox_worker, args=(self.stop_event,), name="outbox", daemon=True)
        self.webhooks = threading.Thread(target=run_webhook_worker, args=(self.stop_event,), name="webhooks",
                                         daemon=True)

    def start(self) -> None:
        self.engine.start()
        self.outbox.start()
        self.webhooks.start()

    def stop(self) -> None:
        self.stop_event.set()
        self.engine.stop()


def _worker(args: argparse.Namespace) -> int:
    """A scale-out node: its share of the mailboxes' sync and the outbox, beside a Celery worker
    for the pipeline tasks. Several run side by side (ingest/leases.py divides the mailboxes).

    The Celery worker runs in a process of its own (``celery_process``, spawned, its parse worker
    processes under it; started again if it dies), this one syncs: with both in one process the
    pipeline's linking and storing took the interpreter lock from the runners woken by IDLE, and
    new mail waited for it at every step of its fetch and commit (bench/scaleout_bench.py, part 2).
    A SIGSTOP of this process freezes its sync engine (another engine takes its mailboxes over),
    a ``kill -9`` ends the Celery process within a second (its tasks, acked late, are redelivered)."""
    import multiprocessing
    import time

    setup_django()
    argv = ["worker", f"--loglevel={args.loglevel}", f"--concurrency={args.concurrency}", f"--pool={args.pool}",
            "--without-gossip", "--without-mingle"]
    ctx = multiprocessing.get_context("spawn")  # never fork a process with threads and connections

    def start() -> Any:
        proc = ctx.Process(target=celery_process, args=(argv, os.getpid()), name="mailroom-celery")
        proc.start()
        return proc

    celery = start()
    background = Background()
    background.start()
    stop = threading.Event()

    def _stop(*_: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        while not stop.wait(1.0):
            if not celery.is_alive():
                print(f"mailroom worker: the Celery process exited ({celery.exitcode}); starting it again",
                      file=sys.stderr, flush=True)
                time.sleep(1.0)
                celery = start()
    finally:
        if celery.is_alive():
            os.kill(celery.pid, signal.SIGTERM)  # Celery's warm shutdown: it finishes the tasks it runs
        background.stop()
        celery.join(60)
        if celery.is_alive():
            celery.kill()
            celery.join()
    return 0


def celery_process(argv: list[str], parent: int) -> None:
    """The Celery worker of ``mailroom worker`` (see ``_worker``), in a spawned process."""
    from mailroom.parsing.workers import exit_with_parent

    if sys.platform == "linux":  # killed with its parent at once (the watch thread takes a second)
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    exit_with_parent(parent)
    setup_django()
    from django.conf import settings
    from django.db import connections

    from mailroom.config.celery import app
    from mailroom.parsing.workers import parse_pool

    try:
        app.worker_main(argv)
    finally:
        # Before this process's exit, which waits for its children: the parse workers end with it.
        parse_pool(settings.MAILROOM_PARSE_PROCESSES).shutdown()
        connections.close_all()


def _migrate(args: argparse.Namespace) -> int:
    setup_django()
    from django.contrib.auth import get_user_model

    prepare()
    print("database is up to date")
    if not get_user_model().objects.exists():
        print("No users yet: 'mailroom serve' creates the administrator on its first start and shows its password "
              "once (or create one now: 'mailroom user create NAME --superuser').")
    return 0


def listen(host: str, port: int, threads: int) -> Any:
    """The web server, bound to host:port, or None (after one line on stderr) when it cannot listen
    there: nothing else has been started or created yet."""
    import errno

    from waitress.server import create_server  # type: ignore[import-untyped]

    from mailroom.config.wsgi import application

    try:
        return create_server(application, host=host, port=port, threads=threads)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            reason = f"port {port} is already in use (is Mailroom already running? choose another with --port)"
        elif exc.errno == errno.EACCES:
            reason = f"no permission to listen on port {port} (ports below 1024 need privileges: choose another with --port)"
        else:
            reason = exc.strerror or str(exc)
    except ValueError as exc:  # waitress: a host or port it cannot resolve
        reason = str(exc)
    print(f"mailroom: cannot listen on {host}:{port}: {reason}", file=sys.stderr)
    return None


def run_server(server: Any, host: str, port: int, *, sync: bool, extra: list[str] | None = None) -> int:
    """Serve on ``server`` (from :func:`listen`); on a first start, create the administrator and show
    its credentials. With ``MAILROOM_TASKS=celery`` the web and the API only: the sync engines and
    the outbox run in the ``mailroom worker`` processes."""
    from django.conf import settings

    banner = first_admin()
    background: Background | None = None
    celery = settings.MAILROOM_TASKS == "celery"
    if sync and not celery:
        background = Background()
        background.start()
    url = f"http://{host}:{port}/"
    print(f"Mailroom is running at {url}  (API: {url}api/v1/docs)", flush=True)
    if banner:
        print(f"First start: log in as '{banner['username']}' with password '{banner['password']}'", flush=True)
        print(f"API token for scripts: {banner['token']}", flush=True)
    else:
        print("Log in with your user (create one: 'mailroom user create NAME --superuser').", flush=True)
    if celery:
        print("MAILROOM_TASKS=celery: this process serves the web UI and API only; mail is synced, processed "
              "and sent by 'mailroom worker' processes.", flush=True)
    for line in extra or []:
        print(line, flush=True)

    def _shutdown(*_: Any) -> None:
        server.close()

    signal.signal(signal.SIGTERM, _shutdown)
    try:
        server.run()
    except (KeyboardInterrupt, OSError):
        pass
    finally:
        if background is not None:
            background.stop()
    return 0


def deployment_errors() -> list[str]:
    """The start-up checks (``core/checks.py``) that failed, as lines to print."""
    from django.core.checks import ERROR, run_checks

    return [f"{m.id}: {m.msg} ({m.hint})" for m in run_checks() if m.level >= ERROR]


def _serve(args: argparse.Namespace) -> int:
    setup_django()
    prepare()
    if errors := deployment_errors():
        for line in errors:
            print(f"mailroom: {line}", file=sys.stderr)
        return 1
    server = listen(args.host, args.port, args.threads)
    if server is None:
        return 1
    return run_server(server, args.host, args.port, sync=not args.no_sync)


def _demo(args: argparse.Namespace) -> int:
    setup_django()
    from django.conf import settings

    from mailroom.core.demo import demo_setup

    prepare()
    if os.geteuid() == 0:
        # Dovecot's mail processes (uid 'mail') must traverse the data dir to the demo's mail: others
        # may pass through (0711), not list it; its files stay 0600. 'mailroom serve' narrows it again.
        os.chmod(settings.DATA_DIR, 0o711)  # noqa: S103 - traversal only, for the demo's Dovecot
    server = listen(args.host, args.port, 8)
    if server is None:
        return 1
    try:
        info = demo_setup(settings.DATA_DIR / "demo")
    except RuntimeError as exc:
        server.close()
        print(f"mailroom demo: {exc}", file=sys.stderr)
        return 2
    extra = [
        f"Demo mailbox {info['email']} (IMAP 127.0.0.1:{info['imap_port']}, SMTP 127.0.0.1:{info['smtp_port']}, "
        f"password {info['password']}) is connected; {info['seeded']} sample messages are syncing now.",
    ]
    try:
        return run_server(server, args.host, args.port, sync=True, extra=extra)
    finally:
        info["stop"]()  # type: ignore[operator]
