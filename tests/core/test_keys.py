"""The data dir, the SQLite database with its WAL, and the key files are readable by their owner
only: created so (whatever the umask), and narrowed at start-up where they were left wider."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mailroom.core.keys import create_private_file, load_secret_key, tighten_data_files, write_private_file


@pytest.fixture
def open_umask() -> Iterator[None]:
    """No umask: every mode below comes from the code, not from the process's umask."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def _mailroom(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "MAILROOM_SECRET_KEY", "MAILROOM_ENCRYPTION_KEYS")}
    env["MAILROOM_DATA_DIR"] = str(data_dir)
    return subprocess.run(  # umask 0 in the child too: a mode left to the umask would be 0666/0777
        [sys.executable, "-m", "mailroom.cli", *args], env=env, capture_output=True, text=True, timeout=300,
        preexec_fn=lambda: os.umask(0),
    )


def _modes(root: Path) -> dict[str, int]:
    found = {".": stat.S_IMODE(root.lstat().st_mode)}
    for path in root.rglob("*"):
        found[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return found


def test_migrate_on_a_fresh_data_dir_creates_everything_owner_only(tmp_path: Path) -> None:
    data = tmp_path / "data"
    res = _mailroom(data, "migrate")
    assert res.returncode == 0, res.stderr
    assert _modes(data) == {
        ".": 0o700, "static": 0o700, "mailroom.sqlite3": 0o600, "secret_key": 0o600, "encryption.keys": 0o600,
    }
    # While the database is open (WAL mode) its -wal and -shm files exist: SQLite gives them the
    # database file's mode.
    db = sqlite3.connect(data / "mailroom.sqlite3")
    try:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        db.execute("INSERT INTO django_migrations (app, name, applied) VALUES ('x', 'y', '2026-01-01')")
        db.commit()
        assert db.execute("SELECT count(*) FROM django_migrations WHERE app = 'axes'").fetchone()[0] >= 10
        assert _modes(data) == {
            ".": 0o700, "static": 0o700, "mailroom.sqlite3": 0o600, "mailroom.sqlite3-wal": 0o600,
            "mailroom.sqlite3-shm": 0o600, "secret_key": 0o600, "encryption.keys": 0o600,
        }
    finally:
        db.close()


def test_wider_modes_left_by_an_older_version_are_narrowed_at_start_up(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert _mailroom(data, "migrate").returncode == 0
    db = sqlite3.connect(data / "mailroom.sqlite3")  # keep -wal/-shm on disk
    try:
        db.execute("PRAGMA journal_mode").fetchone()
        db.execute("DELETE FROM django_migrations WHERE app = 'nothing'")
        db.commit()
        (data / "blobs").mkdir()
        (data / "blobs" / "20260101-abc.seg").write_bytes(b"x")
        for path in data.rglob("*"):
            path.chmod(0o777 if path.is_dir() else 0o644)
        data.chmod(0o755)
        res = _mailroom(data, "user", "list")
        assert res.returncode == 0, res.stderr
        assert _modes(data) == {
            ".": 0o700, "static": 0o700, "blobs": 0o700, "blobs/20260101-abc.seg": 0o600,
            "mailroom.sqlite3": 0o600, "mailroom.sqlite3-wal": 0o600, "mailroom.sqlite3-shm": 0o600,
            "secret_key": 0o600, "encryption.keys": 0o600,
        }
    finally:
        db.close()


def test_a_private_file_is_0600_from_its_creation_and_written_whole(tmp_path: Path, open_umask: Any) -> None:
    path = tmp_path / "encryption.keys"
    assert write_private_file(path, "k1:secret\n") is True
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_text() == "k1:secret\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["encryption.keys"]  # no temporary file left
    # An existing key is never replaced.
    assert write_private_file(path, "k2:other\n") is False
    assert path.read_text() == "k1:secret\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["encryption.keys"]


def test_the_secret_key_file_and_its_new_data_dir_are_private(tmp_path: Path, open_umask: Any,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MAILROOM_SECRET_KEY", raising=False)
    data = tmp_path / "a" / "data"
    key = load_secret_key(data)
    assert len(key) >= 50 and (data / "secret_key").read_text() == key
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert stat.S_IMODE((data / "secret_key").stat().st_mode) == 0o600
    assert load_secret_key(data) == key


def test_an_empty_database_file_is_created_0600_and_a_present_one_is_kept(tmp_path: Path, open_umask: Any) -> None:
    path = tmp_path / "mailroom.sqlite3"
    create_private_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_bytes() == b""
    path.write_bytes(b"data")
    create_private_file(path)
    assert path.read_bytes() == b"data"


def test_narrowing_follows_no_symbolic_link(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("x")
    outside.chmod(0o644)
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    (data / "link").symlink_to(outside)
    tighten_data_files([data])
    assert stat.S_IMODE(outside.stat().st_mode) == 0o644
