"""pytest fixtures for the real mail servers (see docs/testing-servers.md).

Enable them in the root ``tests/conftest.py`` with::

    pytest_plugins = ["mailroom.testing.fixtures"]

Fixtures:

* ``mail_servers_dir`` (session): the run dir both servers live in (a fresh
  ``/tmp/mailroom-servers-*``, removed afterwards unless ``MAILROOM_KEEP_SERVERS=1``).
* ``dovecot`` (session): a started :class:`~mailroom.testing.servers.Dovecot`.
* ``postfix`` (session): a started :class:`~mailroom.testing.servers.Postfix`
  delivering ``company.test`` and ``client.test`` to ``dovecot``.
* ``mail_user`` (function): a factory ``mail_user(domain="company.test", *,
  password=None) -> MailUser`` creating a fresh, uniquely named user per call.

If the servers are not installed the fixtures fail (not skip) with a hint to run
``scripts/install-servers``: CI must have them.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest

from mailroom.testing.servers import (
    INSTALL_HINT,
    Dovecot,
    MailUser,
    Postfix,
    ServerError,
    missing_server_binaries,
)

__all__ = ["MailUserFactory", "dovecot", "mail_servers_dir", "mail_user", "postfix"]


class MailUserFactory(Protocol):
    def __call__(self, domain: str = "company.test", *, password: str | None = None) -> MailUser: ...


@pytest.fixture(scope="session")
def mail_servers_dir() -> Iterator[Path]:
    # Not tmp_path_factory: /tmp/pytest-of-<user> is 0700, and the servers' unprivileged
    # processes (users postfix, mail, dovenull) must be able to reach the run dir.
    parent = os.environ.get("MAILROOM_SERVERS_TMP") or None
    path = Path(tempfile.mkdtemp(prefix="mailroom-servers-", dir=parent))
    path.chmod(0o755)
    yield path
    if os.environ.get("MAILROOM_KEEP_SERVERS") == "1":
        sys.stderr.write(f"\nmail servers' run dir kept: {path}\n")
    else:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def dovecot(mail_servers_dir: Path) -> Iterator[Dovecot]:
    if missing := missing_server_binaries(postfix=False):
        pytest.fail(f"Dovecot is not installed (missing {', '.join(missing)}): {INSTALL_HINT}", pytrace=False)
    server = Dovecot(mail_servers_dir)
    try:
        server.start()
    except ServerError as exc:
        pytest.fail(f"cannot start Dovecot: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postfix(mail_servers_dir: Path, dovecot: Dovecot) -> Iterator[Postfix]:
    if missing := missing_server_binaries(dovecot=False):
        pytest.fail(f"Postfix is not installed (missing {', '.join(missing)}): {INSTALL_HINT}", pytrace=False)
    server = Postfix(mail_servers_dir, dovecot, domains=("company.test", "client.test"))
    try:
        server.start()
    except ServerError as exc:
        pytest.fail(f"cannot start Postfix: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def mail_user(dovecot: Dovecot, request: pytest.FixtureRequest) -> MailUserFactory:
    """Factory for fresh users: ``alice = mail_user()``, ``bob = mail_user("client.test")``."""
    prefix = request.node.name.removeprefix("test_")[:24]

    def make(domain: str = "company.test", *, password: str | None = None) -> MailUser:
        return dovecot.new_user(domain, prefix=prefix, password=password)

    return make
