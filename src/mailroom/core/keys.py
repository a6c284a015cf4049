"""Loading of the Django SECRET_KEY: environment first, then a key file in the data folder."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def load_secret_key(data_dir: Path) -> str:
    value = os.environ.get("MAILROOM_SECRET_KEY")
    if value:
        return value
    path = data_dir / "secret_key"
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(50)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it first
        return path.read_text().strip()
    with os.fdopen(fd, "w") as fh:
        fh.write(key)
    return key
