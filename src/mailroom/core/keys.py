"""The data folder's private files: the Django SECRET_KEY (environment first, then a key file in the
data folder), files written whole with owner-only permissions, and the start-up tightening of
permissions in the data folder.

Imported by the settings module: no Django here."""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Iterable
from pathlib import Path

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


def private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) readable by its owner only; an existing ``path`` with a
    wider mode is narrowed to 0700 (its parents are left as they are)."""
    path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    tighten(path, PRIVATE_DIR)


def tighten(path: Path, mode: int) -> None:
    """Narrow ``path``'s permissions to ``mode`` when they are wider; a missing path is no error.
    Symbolic links are not followed (a link in the data dir must not change a file elsewhere)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        return
    if stat.S_IMODE(st.st_mode) & ~mode:
        with contextlib.suppress(FileNotFoundError):
            os.chmod(path, stat.S_IMODE(st.st_mode) & mode)


def write_private_file(path: Path, text: str) -> bool:
    """Write ``text`` to a new file ``path`` with mode 0600 from its creation, atomically: the file
    appears under its name only complete and synced (a temporary file in the same folder, linked to
    ``path``), so a reader never sees it empty or half-written. Returns False, writing nothing, when
    ``path`` exists already (another process created it first)."""
    path.parent.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), PRIVATE_FILE)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)  # fails when path exists: never replaces a key in use
        except FileExistsError:
            return False
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def create_private_file(path: Path) -> None:
    """Create an empty ``path`` with mode 0600 unless it exists (SQLite then opens it as a new
    database, and gives its -wal and -shm files the same mode)."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), PRIVATE_FILE))


def tighten_data_files(directories: Iterable[Path]) -> None:
    """Start-up: every regular file directly in ``directories`` (the data dir, the raw store's
    segment folder) is narrowed to 0600 and the folders to 0700; sub-folders other than these
    (e.g. the demo's mail servers, which need their own modes) are left alone."""
    for directory in directories:
        if not directory.is_dir():
            continue
        tighten(directory, PRIVATE_DIR)
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.is_file(follow_symlinks=False):
                    tighten(Path(entry.path), PRIVATE_FILE)


def load_secret_key(data_dir: Path) -> str:
    value = os.environ.get("MAILROOM_SECRET_KEY")
    if value:
        return value
    path = data_dir / "secret_key"
    if path.exists():
        return path.read_text().strip()
    private_dir(data_dir)
    key = secrets.token_urlsafe(50)
    if not write_private_file(path, key):  # another process created it first
        return path.read_text().strip()
    return key
