"""Test and demo support: private Dovecot/Postfix instances on loopback.

The pytest fixtures live in :mod:`mailroom.testing.fixtures` (imported from the root
``tests/conftest.py``); this package itself does not import pytest.
"""

from mailroom.testing.servers import (
    Dovecot,
    Postfix,
    ServerError,
    ServersNotInstalled,
    missing_server_binaries,
)

__all__ = ["Dovecot", "Postfix", "ServerError", "ServersNotInstalled", "missing_server_binaries"]
