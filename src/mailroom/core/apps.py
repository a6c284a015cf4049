from typing import Any

from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "mailroom.core"
    label = "core"

    def ready(self) -> None:
        from django.db.backends.signals import connection_created

        from mailroom.core import checks  # noqa: F401  (registers the deployment checks)

        connection_created.connect(_private_sqlite_files, dispatch_uid="mailroom-private-sqlite-files")


def _private_sqlite_files(sender: Any, connection: Any, **kwargs: Any) -> None:
    """A database file SQLite created itself (the test database Django recreates, a file removed
    while running) is narrowed to 0600 with its -wal and -shm on the next connection."""
    if connection.vendor != "sqlite":
        return
    name = str(connection.settings_dict.get("NAME") or "")
    if not name or name == ":memory:" or name.startswith("file:"):
        return
    from pathlib import Path

    from mailroom.core.keys import PRIVATE_FILE, tighten

    for suffix in ("", "-wal", "-shm"):
        tighten(Path(name + suffix), PRIVATE_FILE)
