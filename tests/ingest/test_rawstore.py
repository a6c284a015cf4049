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


@pytest.mark.parametrize("raw_store", ["files", "database"])
def test_raw_bytes_come_back_byte_identical(team: Any, settings: Any, tmp_path: Any, raw_store: str) -> None:
    # NUL, every byte value, bytes that are no UTF-8, CR without LF, and a message larger than the
    # driver's COPY buffer: stored as they came, by whichever path (COPY on PostgreSQL).
    from django.db import connection

    settings.MAILROOM_RAW_STORE = raw_store
    settings.MAILROOM_BLOB_DIR = tmp_path / "blobs"
    head = b"Message-ID: <bytes-%d@x.test>\r\nFrom: a@x.test\r\nSubject: \xff\xfe\x00\r\n\r\n"
    raws = [
        head % 1 + bytes(range(256)) * 4 + b"\x00\r\r\n\x00",
        head % 2 + b"\xd0\xa1\xd1\x87\xd1\x91\xd1\x82 \xc0\x80 \xed\xa0\x80 \x00" * 30000,  # 1.4 MB
        head % 3,
    ]
    res = store_batch(team_id=team.pk, items=[IncomingRaw(raw=r, key=f"k{i}") for i, r in enumerate(raws)], kind="lmtp")
    assert res.new_messages == 3
    assert [MessageRaw.objects.get(message_id=pk).read() for pk in res.message_pks] == raws
    if raw_store == "database":  # what the parse reads (on PostgreSQL in binary, a chunk at a time)
        from mailroom.conversations.models import _pg_raw_refs_for

        assert raw_refs_for(res.message_pks) == dict(zip(res.message_pks, raws, strict=True))
        if connection.vendor == "postgresql":
            assert _pg_raw_refs_for([*res.message_pks, 10**12], chunk=2) == dict(zip(res.message_pks, raws, strict=True))


def test_a_raw_row_already_there_is_kept_and_the_rest_of_the_batch_stored(team: Any, settings: Any) -> None:
    # What a concurrent worker leaves: the message's raw row is there when this batch inserts its
    # own (on PostgreSQL the COPY fails on it, and the rows go by INSERT ... ON CONFLICT DO NOTHING).
    from django.db import transaction

    settings.MAILROOM_RAW_STORE = "database"
    from mailroom.ingest.rawstore import _insert_raws

    first, second = make_mail(1), make_mail(2)
    res = store_batch(team_id=team.pk, items=[IncomingRaw(raw=first, key="a"), IncomingRaw(raw=second, key="b")],
                      kind="lmtp")
    MessageRaw.objects.filter(message_id=res.message_pks[1]).delete()
    with transaction.atomic():
        _insert_raws([(res.message_pks[0], b"another copy\x00"), (res.message_pks[1], second)])
        Source.objects.filter(key="a").update(key="a2")  # the transaction goes on after the conflict
    assert sorted(MessageRaw.objects.values_list("message_id", flat=True)) == sorted(res.message_pks)
    assert [MessageRaw.objects.get(message_id=pk).read() for pk in res.message_pks] == [first, second]
    assert Source.objects.filter(key="a2").count() == 1


@pytest.mark.django_db(transaction=True)
def test_two_mailboxes_storing_the_same_message_at_once_keep_one_raw_row(team: Any, settings: Any) -> None:
    # The same mail in two mailboxes of a team, imported at the same moment: B looks for it before A
    # commits (not there), then inserts the message after A's commit (A's row is found, and A's raw
    # row makes B's COPY fail). B stores its source without an error; one message, one raw row.
    import threading

    from django.db import connection, transaction

    if connection.vendor != "postgresql":
        pytest.skip("SQLite takes one writer at a time: B cannot look before A commits")
    settings.MAILROOM_RAW_STORE = "database"
    raw = make_mail(1, body="Один и тот же счёт \x00\n")
    a, b = MailboxFactory(team=team), MailboxFactory(team=team)
    folders = {mb.pk: FolderFactory(mailbox=mb) for mb in (a, b)}
    a_stored, b_waits = threading.Event(), threading.Event()
    results: dict[str, Any] = {}

    def store(mb: Any) -> Any:
        return store_batch(team_id=team.pk, items=[IncomingRaw(raw=raw, uid=7)], kind="imap", mailbox=mb,
                           folder=folders[mb.pk], uidvalidity=1)

    def worker_a() -> None:  # A's own connection (Django's are per thread), closed when done
        try:
            with transaction.atomic():
                results["a"] = store(a)
                a_stored.set()
                b_waits.wait(60)
        finally:
            a_stored.set()
            connection.close()

    def worker_b() -> None:
        try:
            a_stored.wait(60)
            results["b"] = store(b)
        except Exception as exc:  # reported by the assertions below
            results["b"] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=worker_a), threading.Thread(target=worker_b)]
    for t in threads:
        t.start()
    a_stored.wait(60)
    with connection.cursor() as cur:  # B waits for A's uncommitted message row before A commits
        for _ in range(600):
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                        "AND wait_event_type = 'Lock'")
            if cur.fetchone()[0]:
                break
            threading.Event().wait(0.1)
    b_waits.set()
    for t in threads:
        t.join(60)
    assert results["b"].message_pks == results["a"].message_pks
    assert Message.objects.count() == 1
    assert list(MessageRaw.objects.values_list("message_id", flat=True)) == results["a"].message_pks
    assert MessageRaw.objects.get().read() == raw
    assert sorted(Source.objects.values_list("mailbox_id", flat=True)) == sorted([a.pk, b.pk])
    # New once: A stored it, B found it stored; one "message.received", not one per mailbox.
    assert (results["a"].new_messages, results["b"].new_messages) == (1, 0)
    assert (results["a"].new_sources, results["b"].new_sources) == (1, 1)
    from mailroom.events.models import Event

    assert list(Event.objects.values_list("kind", "payload__mailbox_id")) == [("message.received", a.pk)]
