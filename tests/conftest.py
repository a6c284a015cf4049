from __future__ import annotations

from typing import Any

import pytest

pytest_plugins = ["tests.factories_plugin", "mailroom.testing.fixtures"]


@pytest.fixture(autouse=True)
def _encryption_key(settings: Any) -> None:
    from mailroom.core import crypto

    settings.MAILROOM_ENCRYPTION_KEYS = "test1:" + "A" * 43
    crypto._cache.clear()
