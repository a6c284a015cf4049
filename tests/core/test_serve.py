"""`mailroom serve` as a newcomer runs it: first start migrates, creates the admin, prints how to log
in, serves the API; without its encryption key it refuses with a clear message."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from mailroom.testing.servers import free_port

pytestmark = pytest.mark.e2e


def _start(data: Path, port: int) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "MAILROOM_ENCRYPTION_KEYS")}
    env["MAILROOM_DATA_DIR"] = str(data)
    return subprocess.Popen(
        [sys.executable, "-m", "mailroom.cli", "serve", "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def test_first_start_and_key_missing(tmp_path: Path) -> None:
    port = free_port()
    proc = _start(tmp_path, port)
    try:
        lines = [proc.stdout.readline() for _ in range(3)]  # type: ignore[union-attr]
        assert lines[0] == f"Mailroom is running at http://127.0.0.1:{port}/  (API: http://127.0.0.1:{port}/api/v1/docs)\n"
        assert lines[1].startswith("First start: log in as 'admin' with password '")
        token = lines[2].removeprefix("API token for scripts: ").strip()
        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
                    assert json.loads(resp.read()) == {"status": "ok"}
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        req = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/mailboxes", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310
            assert json.loads(resp.read()) == []
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
