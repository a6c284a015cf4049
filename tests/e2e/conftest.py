"""Fixtures of the end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from tests.outbound.conftest import free_port
from tests.outbound.relay_mail import RELAY

from mailroom.ingest.lmtp.server import RelayController, start_relay_server


@pytest.fixture
def relay(settings: Any, postfix: Any) -> Iterator[RelayController]:
    """Mailroom's relay endpoint (LMTP) on loopback, with Postfix delivering the relay domain to it."""
    settings.MAILROOM_RELAY_DOMAIN = RELAY
    settings.MAILROOM_TRUSTED_AUTHSERV_IDS = ["mx.company.test"]
    port = free_port()
    controller = start_relay_server(host="127.0.0.1", port=port, lmtp=True)
    postfix.relay(RELAY, port, protocol="lmtp")
    yield controller
    controller.stop()
