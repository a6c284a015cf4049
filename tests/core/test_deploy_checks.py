"""MAILROOM_HTTPS=true: Django's deployment checks pass at WARNING, and Mailroom's own checks refuse a
default secret, a missing encryption key and a wildcard host."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def _check(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("MAILROOM_") and k != "DATABASE_URL"}
    base.update({"MAILROOM_DATA_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "mailroom.config.settings",
                 "MAILROOM_ALLOWED_HOSTS": "crm.company.test", **env})
    return subprocess.run([sys.executable, "-m", "django", "check", "--deploy", "--fail-level", "WARNING"],
                          env=base, capture_output=True, text=True, timeout=120)


KEYS = "k1:" + "B" * 43


@pytest.mark.parametrize("extra", [{}, {"MAILROOM_BEHIND_PROXY": "true"}])
def test_https_deployment_passes_check_deploy(tmp_path: Path, extra: dict[str, str]) -> None:
    res = _check(tmp_path, MAILROOM_HTTPS="true", MAILROOM_ENCRYPTION_KEYS=KEYS, **extra)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "System check identified no issues" in res.stdout


def test_without_https_check_deploy_warns(tmp_path: Path) -> None:
    res = _check(tmp_path, MAILROOM_ENCRYPTION_KEYS=KEYS)
    assert res.returncode == 1 and "security.W004" in res.stderr


@pytest.mark.parametrize(("env", "code"), [
    ({"MAILROOM_SECRET_KEY": "changeme"}, "mailroom.E001"),
    ({"MAILROOM_ENCRYPTION_KEYS": ""}, "mailroom.E002"),
    ({"MAILROOM_ALLOWED_HOSTS": "*"}, "mailroom.E003"),
])
def test_unsafe_https_deployment_is_refused(tmp_path: Path, env: dict[str, str], code: str) -> None:
    res = _check(tmp_path, MAILROOM_HTTPS="true", **{"MAILROOM_ENCRYPTION_KEYS": KEYS, **env})
    assert res.returncode == 1
    assert code in res.stderr


def test_serve_refuses_to_start_on_a_failed_check(settings: pytest.FixtureRequest) -> None:
    from mailroom.core.cli import deployment_errors

    settings.MAILROOM_HTTPS = True  # type: ignore[attr-defined]
    settings.ALLOWED_HOSTS = ["*"]  # type: ignore[attr-defined]
    assert [e.split(":")[0] for e in deployment_errors()] == ["mailroom.E003"]
    settings.ALLOWED_HOSTS = ["crm.company.test"]  # type: ignore[attr-defined]
    assert deployment_errors() == []
