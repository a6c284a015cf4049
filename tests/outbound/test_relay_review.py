"""Review of held relay mail through the API: list, download, release, reject, per team."""

from __future__ import annotations

from typing import Any

import pytest

from mailroom.conversations.models import Message
from mailroom.outbound.models import OutboxMessage, PersonalAddress, RelayHold, RelayToken
from mailroom.outbound.relay import relay_address, relay_receive, relay_token_revoke
from tests.factories import UserFactory
from tests.outbound.relay_mail import reply_mail, sent_offer

pytestmark = pytest.mark.django_db

URL = "/api/v1/relay/holds"


def _held_stranger_reply(user: Any, mailbox: Any) -> tuple[RelayHold, bytes, OutboxMessage]:
    row = sent_offer(user, mailbox)
    addr = relay_address(row.relay_token.token)  # type: ignore[union-attr]
    fake = reply_mail(addr, sender="stranger@other.test", mid="fake@other.test", in_reply_to=row.message_id)
    assert "held" in relay_receive(mail_from="stranger@other.test", rcpt=addr, raw=fake).text
    return RelayHold.objects.get(), fake, row


def test_list_get_download_and_release_a_held_reply(
    relay_on: None, sink_mailbox: Any, user: Any, api_client: Any, other_team_client: Any
) -> None:
    hold, raw, _ = _held_stranger_reply(user, sink_mailbox)
    page = api_client.get(URL).json()
    assert (page["count"], page["count_kind"]) == (1, "exact")
    listed = page["items"]
    assert [(h["id"], h["mailbox"], h["relay_kind"], h["mail_from"], h["subject"], h["message_id"], h["decision"])
            for h in listed] == [(hold.pk, sink_mailbox.pk, "client", "stranger@other.test", "Re: Hello",
                                  "fake@other.test", "pending")]
    assert listed[0]["reason"] == "sender stranger@other.test is not a participant of the thread"
    assert api_client.get(f"{URL}?mailbox={sink_mailbox.pk + 1000}").json() == {
        "items": [], "count": 0, "count_kind": "exact"
    }
    dl = api_client.get(f"{URL}/{hold.pk}/raw")
    assert (dl.status_code, dl.content, dl["Content-Type"]) == (200, raw, "message/rfc822")
    # Another team sees none of it and cannot act on it.
    assert other_team_client.get(URL).json() == {"items": [], "count": 0, "count_kind": "exact"}
    for path in (f"{URL}/{hold.pk}", f"{URL}/{hold.pk}/raw"):
        assert other_team_client.get(path).status_code == 404
    assert other_team_client.post(f"{URL}/{hold.pk}/release").json() == {"detail": f"held relay mail {hold.pk} not found"}

    res = api_client.post(f"{URL}/{hold.pk}/release")
    assert res.status_code == 200
    body = res.json()
    msg = Message.objects.get(message_id="fake@other.test")
    assert (body["decision"], body["message"], body["reviewed_by"], body["outbox"]) == ("released", msg.pk, user.pk, None)
    assert msg.direction == "incoming" and list(msg.sources.values_list("kind", flat=True)) == ["lmtp"]
    again = api_client.post(f"{URL}/{hold.pk}/release")
    assert again.status_code == 409
    assert again.json()["detail"] == f"held relay mail {hold.pk} was already released"
    assert api_client.get(URL).json()["items"] == []
    assert [h["id"] for h in api_client.get(f"{URL}?decision=released").json()["items"]] == [hold.pk]


def test_rejected_mail_stays_out_of_the_thread(relay_on: None, sink_mailbox: Any, user: Any, api_client: Any) -> None:
    hold, _, _ = _held_stranger_reply(user, sink_mailbox)
    res = api_client.post(f"{URL}/{hold.pk}/reject")
    assert (res.status_code, res.json()["decision"]) == (200, "rejected")
    assert api_client.post(f"{URL}/{hold.pk}/release").status_code == 409
    assert not Message.objects.filter(message_id="fake@other.test").exists()
    assert [h["id"] for h in api_client.get(f"{URL}?decision=rejected").json()["items"]] == [hold.pk]


def test_mail_of_a_revoked_address_cannot_be_released(relay_on: None, sink_mailbox: Any, user: Any, api_client: Any) -> None:
    hold, _, row = _held_stranger_reply(user, sink_mailbox)
    relay_token_revoke(token=row.relay_token)  # type: ignore[arg-type]
    res = api_client.post(f"{URL}/{hold.pk}/release")
    assert res.status_code == 409
    assert res.json()["detail"] == f"held relay mail {hold.pk}: its relay address is revoked; it cannot be released"
    assert RelayHold.objects.get().decision == ""


def _client_reply_forwarded_to_owner(team: Any, mailbox: Any) -> tuple[Any, str]:
    """A deal owner whose offer the client answered: the answer was forwarded to his personal
    address. Returns the owner and the relay address his own answer goes to."""
    owner: Any = UserFactory(team=team, email="owner@company.test")
    PersonalAddress.objects.create(user=owner, address="owner@personal.test")
    row = sent_offer(owner, mailbox, relay_to_owner=True)
    addr = relay_address(row.relay_token.token)  # type: ignore[union-attr]
    relay_receive(mail_from="client@client.test", rcpt=addr, raw=reply_mail(addr, in_reply_to=row.message_id))
    return owner, relay_address(RelayToken.objects.get(kind="owner").token)


def test_a_released_owner_answer_goes_to_the_client(
    relay_on: None, sink_mailbox: Any, team: Any, user: Any, api_client: Any
) -> None:
    owner, owner_addr = _client_reply_forwarded_to_owner(team, sink_mailbox)
    unauth = (  # no authentication verdict from a trusted server: held
        f"From: Owner <owner@personal.test>\r\nTo: {owner_addr}\r\nSubject: Re: Hello\r\n"
        "Message-ID: <answer1@personal.test>\r\nDate: Sat, 01 Mar 2025 11:00:00 +0000\r\n\r\nDeal: 10% off.\r\n"
    ).encode()
    assert "held" in relay_receive(mail_from="owner@personal.test", rcpt=owner_addr, raw=unauth).text
    hold = RelayHold.objects.get()
    assert hold.reason == "sender authentication (DKIM/SPF) did not pass"
    body = api_client.post(f"{URL}/{hold.pk}/release").json()
    out = OutboxMessage.objects.get(origin="relay_owner")
    assert (body["decision"], body["outbox"], body["relay_kind"]) == ("released", out.pk, "owner")
    assert out.to == ["client@client.test"] and out.created_by == owner
    raw = bytes(out.raw)
    assert b"From: Acme Sales <manager@company.test>" in raw and b"Deal: 10% off." in raw and b"personal.test" not in raw


def test_an_owner_answer_signed_by_his_domain_is_relayed_on_our_own_dkim_check(
    relay_on: None, sink_mailbox: Any, team: Any, user: Any, settings: Any
) -> None:
    """No trusted Authentication-Results: Mailroom verifies the signature itself (the key from a DNS
    server on loopback); the same answer signed by another domain is held."""
    import dkim

    from mailroom.testing.dns import loopback_dns
    from tests.parsing.test_authn import make_key

    priv, record = make_key()
    _, owner_addr = _client_reply_forwarded_to_owner(team, sink_mailbox)

    def answer(mid: str, domain: bytes) -> bytes:
        raw = (
            f"From: Owner <owner@personal.test>\r\nTo: {owner_addr}\r\nSubject: Re: Hello\r\n"
            f"Message-ID: <{mid}@personal.test>\r\nDate: Sat, 01 Mar 2025 11:00:00 +0000\r\n\r\nDeal: 10% off.\r\n"
        ).encode()
        return dkim.sign(raw, b"sel", domain, priv, include_headers=[b"from", b"to", b"subject", b"message-id"]) + raw

    with loopback_dns({"sel._domainkey.personal.test": [record], "sel._domainkey.other.test": [record]}) as dns:
        settings.MAILROOM_DKIM_VERIFY = True
        settings.MAILROOM_DNS_SERVERS = [dns.server]
        other = relay_receive(mail_from="owner@personal.test", rcpt=owner_addr, raw=answer("a0", b"other.test"))
        signed = relay_receive(mail_from="owner@personal.test", rcpt=owner_addr, raw=answer("a1", b"personal.test"))
    assert "held" in other.text
    assert RelayHold.objects.get().reason == "sender authentication (DKIM/SPF) did not pass"
    assert (signed.code, signed.text) == (250, "2.0.0 relayed")
    assert OutboxMessage.objects.get(origin="relay_owner").to == ["client@client.test"]
