"""The test database as a DATABASE_URL, for subprocesses of end-to-end tests (kill -9 runs, workers)."""

from __future__ import annotations

from django.db import connection


def subprocess_database_url() -> str:
    s = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{s['NAME']}"
    return f"postgres://{s.get('USER') or 'postgres'}@{s.get('HOST') or '127.0.0.1'}:{s.get('PORT') or 5432}/{s['NAME']}"


def subprocess_env() -> dict[str, str]:
    """What a subprocess needs to share this test run's data: the database and the raw store."""
    from django.conf import settings

    return {
        "DATABASE_URL": subprocess_database_url(),
        "MAILROOM_RAW_STORE": settings.MAILROOM_RAW_STORE,
        "MAILROOM_BLOB_DIR": str(settings.MAILROOM_BLOB_DIR),
    }
