"""Settings read from the environment: the relay quotas and the engines' lease time are whole numbers
with a floor, and a wrong value stops the start with a message naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

NAMES = ("MAILROOM_RELAY_QUOTA_PER_TOKEN", "MAILROOM_RELAY_QUOTA_PER_TEAM", "MAILROOM_RELAY_QUOTA_WINDOW_SECONDS",
         "MAILROOM_RELAY_MAX_FAILED_RCPTS", "MAILROOM_LEASE_SECONDS")


def _read(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("MAILROOM_") and k != "DATABASE_URL"}
    base.update({"MAILROOM_DATA_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "mailroom.config.settings", **env})
    code = f"from django.conf import settings; print(*(getattr(settings, n) for n in {NAMES!r}))"
    return subprocess.run([sys.executable, "-c", code], env=base, capture_output=True, text=True, timeout=120)


def test_relay_quota_defaults_and_overrides(tmp_path: Path) -> None:
    assert _read(tmp_path).stdout.split() == ["100", "2000", "3600", "10", "60"]
    res = _read(tmp_path, MAILROOM_RELAY_QUOTA_PER_TOKEN=" 5 ", MAILROOM_RELAY_QUOTA_PER_TEAM="50",
                MAILROOM_RELAY_QUOTA_WINDOW_SECONDS="600", MAILROOM_RELAY_MAX_FAILED_RCPTS="0",
                MAILROOM_LEASE_SECONDS="5")
    assert res.stdout.split() == ["5", "50", "600", "0", "5"], res.stderr


@pytest.mark.parametrize(("name", "value", "message"), [
    ("MAILROOM_RELAY_QUOTA_PER_TOKEN", "lots", "MAILROOM_RELAY_QUOTA_PER_TOKEN must be a whole number, not 'lots'"),
    ("MAILROOM_RELAY_QUOTA_PER_TEAM", "0", "MAILROOM_RELAY_QUOTA_PER_TEAM must be at least 1, not 0"),
    ("MAILROOM_RELAY_QUOTA_WINDOW_SECONDS", "59", "MAILROOM_RELAY_QUOTA_WINDOW_SECONDS must be at least 60, not 59"),
    ("MAILROOM_RELAY_MAX_FAILED_RCPTS", "-1", "MAILROOM_RELAY_MAX_FAILED_RCPTS must be at least 0, not -1"),
    ("MAILROOM_RELAY_QUOTA_PER_TOKEN", "1.5", "MAILROOM_RELAY_QUOTA_PER_TOKEN must be a whole number, not '1.5'"),
    ("MAILROOM_LEASE_SECONDS", "1", "MAILROOM_LEASE_SECONDS must be at least 2, not 1"),
    ("MAILROOM_LEASE_SECONDS", "a minute", "MAILROOM_LEASE_SECONDS must be a whole number, not 'a minute'"),
])
def test_wrong_relay_quota_settings_are_refused(tmp_path: Path, name: str, value: str, message: str) -> None:
    res = _read(tmp_path, **{name: value})
    assert res.returncode == 1
    assert f"django.core.exceptions.ImproperlyConfigured: {message}" in res.stderr
