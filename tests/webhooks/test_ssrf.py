"""The SSRF guard, with loopback receivers and an injected resolver only: no test opens a
connection to a private or link-local address (a spy on socket.create_connection proves that the
refused ones are refused before connecting)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

from mailroom.core import netguard
from mailroom.core.errors import InvalidInput
from mailroom.core.netguard import BlockedURL
from mailroom.events.models import Event
from mailroom.events.services import event_record
from mailroom.webhooks.models import WebhookAttempt, WebhookDelivery
from mailroom.webhooks.services import webhook_deliver_due, webhook_endpoint_create
from mailroom.webhooks.transport import check_url
from tests.webhooks.conftest import Receiver

NAMES = {"private.test": ["10.0.0.1"], "metadata.test": ["169.254.169.254"], "six.test": ["::1"],
         "mixed.test": ["93.184.215.14", "10.0.0.1"], "mapped.test": ["::ffff:127.0.0.1"],
         "public.test": ["93.184.215.14"], "loop.test": ["127.0.0.1"]}


@pytest.fixture(autouse=True)
def _resolver() -> Iterator[None]:
    def resolve(host: str, port: int) -> list[str]:
        if host not in NAMES:
            raise OSError("no such name")
        return NAMES[host]

    netguard.set_resolver(resolve)
    yield
    netguard.set_resolver(None)


@pytest.fixture
def connections(monkeypatch: Any) -> list[Any]:
    """Every connection attempted (loopback only ever goes through to the real call)."""
    made: list[Any] = []
    real = socket.create_connection

    def spy(address: Any, *args: Any, **kw: Any) -> Any:
        made.append(address)
        assert address[0] == "127.0.0.1", f"a connection to {address[0]} was attempted"
        return real(address, *args, **kw)

    monkeypatch.setattr(socket, "create_connection", spy)
    return made


@pytest.mark.parametrize("host", ["private.test", "metadata.test", "six.test", "mixed.test", "mapped.test",
                                  "10.0.0.1", "169.254.169.254", "[::1]", "127.0.0.1", "loop.test", "0.0.0.0"])
def test_non_public_destinations_refused_when_not_allowlisted(settings: Any, host: str) -> None:
    settings.MAILROOM_WEBHOOK_ALLOW_HOSTS = []
    with pytest.raises(BlockedURL, match="loopback, private, link-local or reserved"):
        check_url(f"https://{host}/hook")


def test_https_public_passes_http_needs_the_allowlist(settings: Any) -> None:
    settings.MAILROOM_WEBHOOK_ALLOW_HOSTS = []
    target = check_url("https://public.test/hook?x=1")
    assert (target.scheme, target.host, target.port, target.path, target.addresses, target.allowlisted) == (
        "https", "public.test", 443, "/hook?x=1", ("93.184.215.14",), False)
    with pytest.raises(BlockedURL, match="only https://"):
        check_url("http://public.test/hook")
    for bad in ("ftp://public.test/", "https://user:pw@public.test/", "https://public.test/a b", "https:///x"):
        with pytest.raises(BlockedURL):
            check_url(bad)
    settings.MAILROOM_WEBHOOK_ALLOW_HOSTS = ["127.0.0.1"]
    assert check_url("http://127.0.0.1:8080/h").allowlisted
    assert check_url("http://loop.test:8080/h").addresses == ("127.0.0.1",)  # allowlisted by its address
    with pytest.raises(BlockedURL):
        check_url("http://private.test/h")  # 10.0.0.1 is not on the list
    settings.MAILROOM_WEBHOOK_ALLOW_HOSTS = ["10.0.0.0/8"]
    assert check_url("http://private.test/h").allowlisted  # a closed network opted in (nothing connects here)


@pytest.mark.django_db
def test_refused_before_any_connection(team: Any, settings: Any, connections: list[Any]) -> None:
    settings.MAILROOM_WEBHOOK_ALLOW_HOSTS = []
    for host in ("private.test", "metadata.test", "six.test"):
        webhook_endpoint_create(team_id=team.pk, url=f"https://{host}/hook")
    event_record(team_id=team.pk, kind=Event.Kind.MESSAGE_RECEIVED, payload={"message": 1})
    assert webhook_deliver_due() == 3
    assert connections == []
    errors = sorted(WebhookAttempt.objects.values_list("error", flat=True))
    assert len(errors) == 3 and all(e.startswith("refused: ") and "resolves to a loopback, private" in e for e in errors)
    assert set(WebhookDelivery.objects.values_list("state", "attempts")) == {("pending", 1)}


@pytest.mark.django_db
def test_http_loopback_refused_unless_allowlisted(team: Any, settings: Any, receiver: Receiver,
                                                  connections: list[Any]) -> None:
    settings.MAILROOM_WEBHOOK_ALLOW_HOSTS = []
    with pytest.raises(InvalidInput, match=r"url: 127\.0\.0\.1 resolves to a loopback"):
        webhook_endpoint_create(team_id=team.pk, url=receiver.url.replace("http:", "https:"), enabled=True)
    with pytest.raises(InvalidInput, match="only https://"):
        webhook_endpoint_create(team_id=team.pk, url="http://public.test/h")
    settings.MAILROOM_WEBHOOK_ALLOW_HOSTS = ["127.0.0.1"]
    webhook_endpoint_create(team_id=team.pk, url=receiver.url)  # allowlisted when it was made
    settings.MAILROOM_WEBHOOK_ALLOW_HOSTS = []  # no longer: each attempt checks again
    event_record(team_id=team.pk, kind=Event.Kind.MESSAGE_RECEIVED, payload={"message": 1})
    assert webhook_deliver_due() == 1
    assert receiver.requests == [] and connections == []
    settings.MAILROOM_WEBHOOK_ALLOW_HOSTS = ["127.0.0.1"]
    WebhookDelivery.objects.update(next_attempt_at=WebhookDelivery.objects.get().created_at)
    assert webhook_deliver_due() == 1
    assert len(receiver.requests) == 1 and connections == [("127.0.0.1", receiver.port)]


@pytest.mark.django_db
def test_redirect_not_followed(team: Any, make_receiver: Any, connections: list[Any]) -> None:
    target = make_receiver()
    redirector = make_receiver(answers=[307], location=target.url)
    webhook_endpoint_create(team_id=team.pk, url=redirector.url)
    event_record(team_id=team.pk, kind=Event.Kind.MESSAGE_RECEIVED, payload={"message": 1})
    assert webhook_deliver_due() == 1
    assert len(redirector.requests) == 1 and target.requests == []
    d = WebhookDelivery.objects.get()
    assert (d.state, d.last_status, d.last_error) == ("pending", 307, "redirect not followed")
    assert connections == [("127.0.0.1", redirector.port)]


def test_connected_peer_checked(settings: Any) -> None:
    """The connected socket's peer goes through the same check (a name that resolved to a public
    address but whose connection lands on loopback is refused)."""
    from mailroom.webhooks.transport import address_ok

    settings.MAILROOM_WEBHOOK_ALLOW_HOSTS = []
    assert not address_ok("127.0.0.1", host_listed=False)
    assert not address_ok("::ffff:10.0.0.1", host_listed=False)
    assert not address_ok("fe80::1%eth0", host_listed=False)
    assert address_ok("93.184.215.14", host_listed=False)
    settings.MAILROOM_WEBHOOK_ALLOW_HOSTS = ["127.0.0.1"]
    assert address_ok("127.0.0.1", host_listed=False)
