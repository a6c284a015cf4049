"""The raw store: identities, sources and what the import path records."""

from __future__ import annotations

from typing import Any

import pytest

from mailroom.conversations import pipeline
from mailroom.conversations.models import Message, MessageRaw, Source, raw_refs_for
from mailroom.ingest.rawstore import IncomingRaw, store_batch
from tests.factories import FolderFactory, MailboxFactory
from tests.ingest.helpers import make_mail

pytestmark = pytest.mark.django_db


def test_batch_is_idempotent_and_dedupes_within_and_across_sources(team: Any) -> None:
    mb = MailboxFactory(team=team)
    inbox = FolderFactory(mailbox=mb)
    raw = make_mail(1)
    items = [IncomingRaw(raw=raw, uid=1), IncomingRaw(raw=make_mail(2), uid=2), IncomingRaw(raw=raw, uid=3)]
    first = store_batch(team_id=team.pk, items=items, kind="imap", mailbox=mb, folder=inbox, uidvalidity=1)
    assert (first.new_messages, first.new_sources, first.known_sources) == (2, 3, 0)
    assert first.message_pks[0] == first.message_pks[2]
    again = store_batch(team_id=team.pk, items=items, kind="imap", mailbox=mb, folder=inbox, uidvalidity=1)
    assert (again.new_messages, again.new_sources, again.known_sources) == (0, 0, 3)
    assert again.message_pks == first.message_pks
    relay = store_batch(team_id=team.pk, items=[IncomingRaw(raw=raw, key="lmtp:x")], kind="lmtp")
    assert (relay.new_messages, relay.new_sources) == (0, 1)
    assert Message.objects.count() == 2
    assert Source.objects.filter(message_id=first.message_pks[0]).count() == 3


def test_same_message_id_with_other_content_is_another_message(team: Any) -> None:
    a = make_mail(1, msgid="same@client.test", body="original")
    b = make_mail(1, msgid="same@client.test", body="forged copy with other text")
    store_batch(team_id=team.pk, items=[IncomingRaw(raw=a, key="k1"), IncomingRaw(raw=b, key="k2")], kind="lmtp")
    assert Message.objects.filter(message_id="same@client.test").count() == 2


def test_crlf_and_lf_copies_are_one_message(team: Any) -> None:
    lf = make_mail(1)
    crlf = lf.replace(b"\n", b"\r\n")
    store_batch(team_id=team.pk, items=[IncomingRaw(raw=lf, key="a"), IncomingRaw(raw=crlf, key="b")], kind="lmtp")
    assert Message.objects.count() == 1


def test_gmail_thread_id_from_fetch_survives_parsing(team: Any) -> None:
    res = store_batch(team_id=team.pk, items=[IncomingRaw(raw=make_mail(1), key="g", gm_thread_id="1734")], kind="lmtp")
    assert Message.objects.get(pk=res.message_pks[0]).routing_headers == {"gm_thread_id": "1734"}
    pipeline.parse_pending()
    msg = Message.objects.get(pk=res.message_pks[0])
    assert msg.state == Message.State.PARSED
    assert msg.routing_headers["gm_thread_id"] == "1734"


def test_sent_copy_turns_an_incoming_message_outgoing(team: Any) -> None:
    mb = MailboxFactory(team=team)
    sent = FolderFactory(mailbox=mb, name="Sent", role="sent")
    raw = make_mail(1, sender=mb.email, to="client@client.test")
    store_batch(team_id=team.pk, items=[IncomingRaw(raw=raw, key="colleague-inbox")], kind="lmtp")
    assert Message.objects.get().direction == "incoming"  # a From header alone proves nothing
    pipeline.drain()
    assert Message.objects.get().state == "linked"
    store_batch(team_id=team.pk, items=[IncomingRaw(raw=raw, uid=1)], kind="imap", mailbox=mb, folder=sent, uidvalidity=1)
    msg = Message.objects.get()
    assert (msg.direction, msg.state) == ("outgoing", "parsed")  # linked again, now as ours
    pipeline.drain()
    msg.refresh_from_db()
    assert (msg.direction, msg.state) == ("outgoing", "linked")


@pytest.mark.parametrize("raw_store", ["files", "database"])
def test_raw_bytes_are_kept_by_the_configured_raw_store(team: Any, settings: Any, tmp_path: Any, raw_store: str) -> None:
    settings.MAILROOM_RAW_STORE = raw_store
    settings.MAILROOM_BLOB_DIR = tmp_path / "blobs"
    raws = [make_mail(1), make_mail(2, body="Привет, " * 5000)]
    res = store_batch(team_id=team.pk, items=[IncomingRaw(raw=r, key=f"k{i}") for i, r in enumerate(raws)], kind="lmtp")
    rows = {r.message_id: r for r in MessageRaw.objects.filter(message_id__in=res.message_pks)}
    assert [rows[pk].read() for pk in res.message_pks] == raws
    segments = list((tmp_path / "blobs").glob("*.seg"))
    if raw_store == "files":
        assert [bool(rows[pk].blob) and rows[pk].data is None for pk in res.message_pks] == [True, True]
        assert [p.stat().st_size for p in segments] == [sum(len(r) for r in raws)]
        # The parse workers are told where the bytes are and read them themselves.
        assert raw_refs_for(res.message_pks) == {pk: rows[pk].blob for pk in res.message_pks}
    else:
        assert [rows[pk].blob for pk in res.message_pks] == ["", ""]
        assert raw_refs_for(res.message_pks) == dict(zip(res.message_pks, raws, strict=True))
        assert segments == []


def test_a_lost_segment_fails_its_messages_and_the_rest_flows(team: Any, settings: Any, tmp_path: Any) -> None:
    settings.MAILROOM_RAW_STORE = "files"
    settings.MAILROOM_BLOB_DIR = tmp_path / "blobs"
    lost = store_batch(team_id=team.pk, items=[IncomingRaw(raw=make_mail(1), key="a")], kind="lmtp").message_pks[0]
    for seg in (tmp_path / "blobs").glob("*.seg"):
        seg.unlink()
    settings.MAILROOM_BLOB_DIR = tmp_path / "blobs2"  # a fresh store (the old one cached its open files)
    kept = store_batch(team_id=team.pk, items=[IncomingRaw(raw=make_mail(2), key="b")], kind="lmtp").message_pks[0]
    pipeline.drain()
    states = dict(Message.objects.values_list("pk", "state"))
    assert states[kept] == Message.State.LINKED
    lost_msg = Message.objects.get(pk=lost)
    assert lost_msg.state == Message.State.QUARANTINED
    assert lost_msg.last_error.startswith("BlobError: segment ") and "is missing from" in lost_msg.last_error


def test_only_the_bytes_of_messages_not_stored_yet_are_appended_once_each(
    team: Any, settings: Any, tmp_path: Any
) -> None:
    settings.MAILROOM_RAW_STORE = "files"
    settings.MAILROOM_BLOB_DIR = tmp_path / "blobs"
    raws = [make_mail(1), make_mail(2)]
    raws.append(raws[0])  # the same message again (another copy in the batch)
    items = [IncomingRaw(raw=r, key=f"k{i}") for i, r in enumerate(raws)]
    first = store_batch(team_id=team.pk, items=items, kind="lmtp")
    (segment,) = (tmp_path / "blobs").glob("*.seg")
    assert segment.stat().st_size == len(raws[0]) + len(raws[1])  # once per message, not per copy
    again = store_batch(team_id=team.pk, items=items, kind="lmtp")  # a batch retried after a crash
    assert again.new_messages == 0 and again.message_pks == first.message_pks
    assert segment.stat().st_size == len(raws[0]) + len(raws[1])  # nothing appended for stored messages
    rows = {r.message_id: r.read() for r in MessageRaw.objects.all()}
    assert [rows[pk] for pk in first.message_pks] == raws


def test_bytes_prepared_before_the_transaction_are_the_ones_stored(team: Any, settings: Any, tmp_path: Any) -> None:
    from mailroom.ingest.rawstore import store_prepare

    settings.MAILROOM_RAW_STORE = "files"
    settings.MAILROOM_BLOB_DIR = tmp_path / "blobs"
    raws = [make_mail(1), make_mail(2)]
    items = [IncomingRaw(raw=r, key=f"k{i}") for i, r in enumerate(raws)]
    prepared = store_prepare(team_id=team.pk, items=items)  # as the IMAP sync does, before its transaction
    (segment,) = (tmp_path / "blobs").glob("*.seg")
    assert segment.stat().st_size == len(raws[0]) + len(raws[1]) and not Message.objects.exists()
    res = store_batch(team_id=team.pk, items=items, kind="lmtp", prepared=prepared)
    assert segment.stat().st_size == len(raws[0]) + len(raws[1])  # not appended a second time
    assert raw_refs_for(res.message_pks) == dict(zip(res.message_pks, prepared.appended.values(), strict=True))
    with pytest.raises(ValueError, match="prepared for other items"):
        store_batch(team_id=team.pk, items=list(items), kind="lmtp", prepared=prepared)


def test_nul_and_raw_bytes_in_addresses_and_routing_headers_are_stored_parsed_and_linked(team: Any) -> None:
    # PostgreSQL takes no NUL and no lone surrogate, in text or JSON: such a header made the
    # import batch fail (a mailbox stuck behind it) or the parse quarantine the message.
    raw = (b"Message-ID: <h2@x.test>\r\nFrom: \"A\x00B\" <a\x00b@x.test>\r\nTo: c\x00d@y.test, e@y.test\r\n"
           b"Subject: s\r\nX-GM-THRID: 1\x00\r\nThread-Topic: \xd0\xa1\xd1\x87\xd1\x91\xd1\x82 \xff\r\n"
           b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\nbody\x00\xff\r\n")
    assert store_batch(team_id=team.pk, kind="lmtp", items=[IncomingRaw(raw=raw, key="k1")]).new_messages == 1
    pipeline.drain()
    m = Message.objects.get()
    assert (m.state, m.message_id, m.from_address) == ("linked", "h2@x.test", "")  # no address holds a NUL
    assert list(m.participants.values_list("address", flat=True)) == ["e@y.test"]
    assert (m.routing_headers["gm_thread_id"], m.routing_headers["thread_topic"]) == ("1", "Счёт \\xff")
