from __future__ import annotations

from typing import Any

import pytest

pytest_plugins = ["tests.factories_plugin", "mailroom.testing.fixtures"]


@pytest.fixture(autouse=True, scope="session")
def _blob_segments_cleanup() -> Any:
    """Raw bytes the tests append (raw store "files") go to the data dir's segment files, shared with
    the subprocesses of end-to-end tests; the segments this session created are removed at its end."""
    from django.conf import settings

    directory = settings.MAILROOM_BLOB_DIR
    before = set(directory.glob("*.seg")) if directory.exists() else set()
    yield
    if directory.exists():
        for path in set(directory.glob("*.seg")) - before:
            path.unlink(missing_ok=True)


@pytest.fixture(autouse=True)
def _encryption_key(settings: Any) -> None:
    from mailroom.core import crypto

    settings.MAILROOM_ENCRYPTION_KEYS = "test1:" + "A" * 43
    crypto._cache.clear()


@pytest.fixture(autouse=True)
def _no_dns(settings: Any) -> None:
    """No test looks anything up on the machine's resolver (there is no network here): DKIM is
    verified only where a test turns it on, with its own loopback DNS server."""
    settings.MAILROOM_DKIM_VERIFY = False
    settings.MAILROOM_TRUSTED_AUTHSERV_IDS = ["mx.company.test"]  # tests.conversations.mail.TRUSTED_MX
