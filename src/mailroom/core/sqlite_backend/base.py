"""Django's SQLite backend, with two changes: how a transaction waits for the write lock, and the
size of each connection's page cache.

SQLite has one writer at a time. ``BEGIN IMMEDIATE`` waits for the lock in SQLite's default busy
handler, which sleeps 1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50 and then 100 ms between attempts,
without a queue. Beside a writer that commits and begins again at once, a waiter wakes up every
100 ms and finds the lock taken again: during an import through ``mailroom serve`` the IMAP import
waited a third of its time for the lock, once up to 1.1 s, while the pipeline process had it (a
probe of each transaction's wait and hold times, 10,000 messages). Here a transaction polls for
the lock every half millisecond instead (an attempt costs a few microseconds), so it has it within
a millisecond of its release, up to the connection's ``timeout`` (then SQLite's own "database is
locked", as before). Other statements keep SQLite's busy handler.

Each connection's page cache is ``MAILROOM_SQLITE_CACHE_KIB`` (see the settings: every thread has a
connection, and the caches grew with the mailbox).
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from django.db.backends.sqlite3 import base

POLL_SECONDS = 0.0005


class DatabaseWrapper(base.DatabaseWrapper):  # type: ignore[misc]
    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        conn = super().get_new_connection(conn_params)
        from django.conf import settings

        # The page cache (MAILROOM_SQLITE_CACHE_KIB; the pipeline's processes set their own).
        conn.execute(f"PRAGMA cache_size=-{int(getattr(settings, 'MAILROOM_SQLITE_CACHE_KIB', 2048))}")
        return conn

    def get_connection_params(self) -> dict[str, Any]:
        params: dict[str, Any] = super().get_connection_params()
        self._busy_seconds = float(params.get("timeout", 5.0))
        return params

    def _start_transaction_under_autocommit(self) -> None:
        mode = getattr(self, "transaction_mode", None)  # set by Django from OPTIONS (not in its stubs)
        begin = f"BEGIN {mode}" if mode else "BEGIN"
        raw = self.connection
        busy_ms = int(self._busy_seconds * 1000)
        deadline = time.monotonic() + self._busy_seconds
        with self.wrap_database_errors:
            raw.execute("PRAGMA busy_timeout=0")
            try:
                while True:
                    try:
                        raw.execute(begin)
                        return
                    except sqlite3.OperationalError as exc:
                        if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() >= deadline:
                            raise
                    time.sleep(POLL_SECONDS)
            finally:
                raw.execute(f"PRAGMA busy_timeout={busy_ms}")
