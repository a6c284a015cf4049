"""`mailroom serve` as a newcomer runs it: first start migrates, creates the admin, prints how to log
in, serves the API; without its encryption key it refuses with a clear message."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from mailroom.testing.servers import free_port

pytestmark = pytest.mark.e2e


def _env(data: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "MAILROOM_ENCRYPTION_KEYS",
                                                            "MAILROOM_ADMIN_PASSWORD")}
    env["MAILROOM_DATA_DIR"] = str(data)
    return env


def _start(data: Path, port: int, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "mailroom.cli", "serve", "--port", str(port)],
        env={**_env(data), **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _users(data: Path) -> int:
    with sqlite3.connect(data / "mailroom.sqlite3") as db:
        return int(db.execute("SELECT count(*) FROM auth_user").fetchone()[0])


def _first_start_banner(proc: subprocess.Popen[str], port: int) -> str:
    """The API token of the first-start banner (after checking its lines)."""
    lines = [proc.stdout.readline() for _ in range(3)]  # type: ignore[union-attr]
    assert lines[0] == f"Mailroom is running at http://127.0.0.1:{port}/  (API: http://127.0.0.1:{port}/api/v1/docs)\n"
    assert lines[1].startswith("First start: log in as 'admin' with password '")
    assert lines[2].startswith("API token for scripts: ")
    return lines[2].removeprefix("API token for scripts: ").strip()


def _get(port: int, path: str, token: str = "") -> object:
    deadline = time.monotonic() + 10
    while True:
        req = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                     headers={"Authorization": f"Bearer {token}"} if token else {})
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310 - loopback
                return json.loads(resp.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_migrate_and_a_busy_port_leave_the_first_start_credentials_to_the_first_real_start(tmp_path: Path) -> None:
    """The administrator's password is shown once, to whoever created it: ``migrate`` creates no user,
    a start that cannot listen creates none either (one line, no traceback), the next start does."""
    mig = subprocess.run([sys.executable, "-m", "mailroom.cli", "migrate"], env=_env(tmp_path), capture_output=True,
                         text=True, timeout=120)
    assert (mig.returncode, mig.stderr) == (0, "")
    assert mig.stdout == (
        "database is up to date\nNo users yet: 'mailroom serve' creates the administrator on its first start and "
        "shows its password once (or create one now: 'mailroom user create NAME --superuser').\n")
    assert _users(tmp_path) == 0

    with socket.socket() as busy:  # another program holds the port
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = _start(tmp_path, port)
        out, err = proc.communicate(timeout=120)
    assert (proc.returncode, out) == (1, "")
    assert err == (f"mailroom: cannot listen on 127.0.0.1:{port}: port {port} is already in use (is Mailroom already "
                   "running? choose another with --port)\n")
    assert _users(tmp_path) == 0

    port = free_port()
    proc = _start(tmp_path, port)
    try:
        token = _first_start_banner(proc, port)
        assert _get(port, "/api/v1/mailboxes", token) == []
    finally:
        proc.terminate()
        proc.wait(10)
    assert _users(tmp_path) == 1
    proc = _start(tmp_path, port)  # later starts show no password
    try:
        assert proc.stdout.readline().startswith("Mailroom is running at")  # type: ignore[union-attr]
        assert proc.stdout.readline() == "Log in with your user (create one: 'mailroom user create NAME --superuser').\n"  # type: ignore[union-attr]
    finally:
        proc.terminate()
        proc.wait(10)


def test_first_start_and_key_missing(tmp_path: Path) -> None:
    port = free_port()
    proc = _start(tmp_path, port)
    try:
        token = _first_start_banner(proc, port)
        assert _get(port, "/healthz") == {"status": "ok"}
        assert _get(port, "/api/v1/mailboxes", token) == []
    finally:
        proc.terminate()
        proc.wait(10)
    assert (tmp_path / "mailroom.sqlite3").exists()
    assert (tmp_path / "encryption.keys").stat().st_mode & 0o777 == 0o600

    # The key file is lost: Mailroom refuses to start rather than fail later on every mailbox.
    (tmp_path / "encryption.keys").unlink()
    proc = _start(tmp_path, free_port())
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 3
    assert "No encryption key: set MAILROOM_ENCRYPTION_KEYS=kid:base64key" in err


def test_with_celery_serve_is_the_web_only_and_says_so(tmp_path: Path) -> None:
    """The sync engines and the outbox run in the ``mailroom worker`` processes: ``serve`` registers
    no engine (and so takes no mailbox's lease)."""
    port = free_port()
    proc = _start(tmp_path, port, MAILROOM_TASKS="celery")
    try:
        _first_start_banner(proc, port)
        assert proc.stdout.readline() == (  # type: ignore[union-attr]
            "MAILROOM_TASKS=celery: this process serves the web UI and API only; mail is synced, processed and "
            "sent by 'mailroom worker' processes.\n"
        )
        assert _get(port, "/healthz") == {"status": "ok"}
        with sqlite3.connect(tmp_path / "mailroom.sqlite3") as db:
            assert db.execute("SELECT count(*) FROM ingest_enginenode").fetchone()[0] == 0
    finally:
        proc.terminate()
        proc.wait(10)
