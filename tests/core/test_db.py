"""The bulk-write helpers of the hot paths write exactly what the ORM would."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from django.db import transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailroom.conversations.models import Message, Source
from mailroom.core.db import insert_dicts, insert_rows, update_rows
from mailroom.events.models import Event
from tests.factories import MessageFactory

WHEN = datetime(2026, 3, 1, 12, 30, 15, tzinfo=UTC)


def test_insert_dicts_fills_defaults_and_converts_json_and_datetimes(team: Any) -> None:
    with transaction.atomic():
        insert_dicts(Message, [
            {"team_id": team.pk, "message_id": "a@x", "message_id_hash": "h1", "content_hash": "c1",
             "received_at": WHEN, "date": WHEN, "references": ["r1@x", "r2@x"],
             "routing_headers": {"gm_thread_id": "77"}},
            {"team_id": team.pk, "message_id": "b@x", "message_id_hash": "h2", "content_hash": "c2",
             "received_at": WHEN},
        ])
    a, b = Message.objects.filter(team=team).order_by("message_id")
    assert (a.references, a.in_reply_to, a.routing_headers, a.date) == (["r1@x", "r2@x"], [], {"gm_thread_id": "77"}, WHEN)
    # Defaults, as a new model instance holds them.
    assert (b.references, b.routing_headers, b.date, b.bounce, b.subject, b.state, b.direction, b.attempts) == (
        [], {}, None, None, "", Message.State.STORED, Message.Direction.INCOMING, 0)


def test_insert_dicts_sets_auto_now_fields(team: Any) -> None:
    before = datetime.now(UTC)
    insert_dicts(Event, [{"team_id": team.pk, "kind": Event.Kind.MESSAGE_SENT, "payload": {"n": 1}}])
    ev = Event.objects.get(team=team)
    assert ev.payload == {"n": 1}
    assert before <= ev.created_at <= datetime.now(UTC)
    assert ev.delivered_at is None


def test_insert_dicts_ignores_conflicts_when_asked(team: Any) -> None:
    msg = MessageFactory(team=team)
    row = {"message_id": msg.pk, "kind": Source.Kind.OUTBOX, "key": "outbox:1"}
    insert_dicts(Source, [row])
    insert_dicts(Source, [row], ignore_conflicts=True)
    assert Source.objects.filter(key="outbox:1").count() == 1


def test_insert_dicts_returns_the_rows_it_inserted_and_not_the_ones_a_conflict_skipped(team: Any) -> None:
    def row(i: int) -> dict[str, Any]:
        return {"team_id": team.pk, "message_id": f"m{i}@x", "message_id_hash": f"h{i}", "content_hash": "c",
                "received_at": WHEN, "references": [f"r{i}@x"]}

    first = insert_dicts(Message, [row(1), row(2)], returning=("id", "message_id_hash"))
    assert sorted(h for _, h in first) == ["h1", "h2"]
    # 2,100 rows: more than one statement's worth of parameters on SQLite.
    again = insert_dicts(Message, [row(i) for i in range(2, 2102)], ignore_conflicts=True,
                         returning=("id", "message_id_hash"))
    assert dict((h, pk) for pk, h in again) == dict(
        Message.objects.filter(team=team).exclude(message_id_hash__in=["h1", "h2"]).values_list("message_id_hash", "id"))
    assert len(again) == 2099
    assert Message.objects.get(message_id_hash="h7").references == ["r7@x"]
    assert Message.objects.filter(team=team).count() == 2101
    assert insert_dicts(Message, [row(1)], ignore_conflicts=True) == []


def test_insert_dicts_rejects_unknown_columns(team: Any) -> None:
    with pytest.raises(ValueError, match="no such columns: team"):
        insert_dicts(Event, [{"team": team, "kind": Event.Kind.MESSAGE_SENT}])


def test_insert_rows_and_update_rows_round_trip(team: Any) -> None:
    insert_rows(Event, [Event(team=team, kind=Event.Kind.MESSAGE_SENT, payload={"i": i}) for i in range(3)])
    events = list(Event.objects.filter(team=team).order_by("id"))
    assert [e.payload for e in events] == [{"i": 0}, {"i": 1}, {"i": 2}]
    for e in events:
        e.payload = {"i": e.payload["i"] * 10, "ru": "письмо"}
        e.delivered_at = WHEN
    update_rows(Event, events, ["payload", "delivered_at"])
    assert [(e.payload, e.delivered_at) for e in Event.objects.filter(team=team).order_by("id")] == [
        ({"i": 0, "ru": "письмо"}, WHEN), ({"i": 10, "ru": "письмо"}, WHEN), ({"i": 20, "ru": "письмо"}, WHEN)]


@settings(max_examples=300, deadline=None)
@given(
    st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1)),  # noqa: DTZ001 - hypothesis takes naive bounds
    st.one_of(st.none(), st.integers(min_value=-14 * 60, max_value=14 * 60).map(lambda m: timezone(timedelta(minutes=m)))),
)
def test_the_datetime_adapter_gives_what_the_backend_gives(value: datetime, tz: Any) -> None:
    from django.db import connection

    from mailroom.core.db import _datetime_adapter

    value = value.replace(tzinfo=tz)
    assert _datetime_adapter(connection)(value) == connection.ops.adapt_datetimefield_value(value)


def test_the_datetime_adapter_passes_none_and_other_types_to_the_backend() -> None:
    from django.db import connection
    from django.utils import timezone as dj_timezone

    from mailroom.core.db import _datetime_adapter

    adapt = _datetime_adapter(connection)
    assert adapt(None) is None
    now = dj_timezone.now()
    assert adapt(now) == connection.ops.adapt_datetimefield_value(now)


_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | _TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])  # rolled back each time
@given(
    subject=_TEXT,
    refs=st.lists(_TEXT, max_size=3),
    routing=st.dictionaries(_TEXT, _JSON, max_size=3),
    when=st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1)),  # noqa: DTZ001 - naive bounds
    minutes=st.integers(min_value=-14 * 60, max_value=14 * 60),
    is_bulk=st.booleans(),
)
def test_insert_dicts_stores_any_text_json_and_datetime_as_the_orm_reads_it(
    team: Any, subject: str, refs: list[str], routing: dict[str, Any], when: datetime, minutes: int, is_bulk: bool
) -> None:
    # On PostgreSQL the rows go as one JSON document (jsonb_to_recordset): quotes, backslashes,
    # Cyrillic, astral characters, nested JSON and any UTC offset come back as they went in.
    date = when.replace(tzinfo=timezone(timedelta(minutes=minutes)))
    with transaction.atomic():
        insert_dicts(Message, [{
            "team_id": team.pk, "message_id": "p@x", "message_id_hash": "hp", "content_hash": "cp",
            "received_at": WHEN, "date": date, "subject": subject, "references": refs,
            "routing_headers": routing, "is_bulk": is_bulk,
        }])
        got = Message.objects.get(team=team, message_id="p@x")
        assert (got.subject, got.references, got.routing_headers, got.date, got.is_bulk) == (
            subject, refs, routing, date, is_bulk)
        transaction.set_rollback(True)


def test_insert_dicts_of_plain_columns_round_trip_with_defaults(team: Any) -> None:
    # Numbers, text, booleans and keys only: on PostgreSQL these rows go by binary COPY.
    from mailroom.conversations.models import Attachment, MessageBody, Participant

    m = MessageFactory(team=team)
    with transaction.atomic():
        insert_dicts(Attachment, [
            {"message_id": m.pk, "filename": "Договор «1».pdf", "content_type": "application/pdf", "size": 2**31 - 1,
             "content_id": "", "inline": True, "part_path": "2"},
            {"message_id": m.pk, "content_type": "image/png", "part_path": "3"},
        ])
        insert_dicts(Participant, [{"message_id": m.pk, "role": "from", "address": "a@x.test", "name": "Анна \\ 'q'"}])
        insert_dicts(MessageBody, [{"message_id": m.pk, "text": "Текст 𝄞\r\n", "html": "<p>\t</p>", "reply_text": ""}])
    assert list(Attachment.objects.filter(message=m).order_by("id").values_list(
        "filename", "content_type", "size", "content_id", "inline", "part_path")) == [
        ("Договор «1».pdf", "application/pdf", 2**31 - 1, "", True, "2"), ("", "image/png", 0, "", False, "3")]
    assert list(Participant.objects.filter(message=m).values_list("role", "address", "name", "contact_id")) == [
        ("from", "a@x.test", "Анна \\ 'q'", None)]
    assert list(MessageBody.objects.filter(message=m).values_list("text", "html", "reply_text")) == [
        ("Текст 𝄞\r\n", "<p>\t</p>", "")]


def test_insert_dicts_of_a_duplicate_key_is_an_integrity_error(team: Any) -> None:
    from django.db import IntegrityError

    from mailroom.conversations.models import MessageBody

    m = MessageFactory(team=team)
    insert_dicts(MessageBody, [{"message_id": m.pk, "text": "a", "html": "", "reply_text": ""}])
    with pytest.raises(IntegrityError), transaction.atomic():
        insert_dicts(MessageBody, [{"message_id": m.pk, "text": "b", "html": "", "reply_text": ""}])
    assert list(MessageBody.objects.values_list("text", flat=True)) == ["a"]


def test_copy_tuples_refuses_a_field_it_has_no_binary_type_for(team: Any) -> None:
    from django.db import connection

    from mailroom.core.db import copy_tuples

    if connection.vendor != "postgresql":
        pytest.skip("COPY is PostgreSQL's")
    with pytest.raises(ValueError, match=r"conversations.Message: no COPY type for \['date'\]"):
        copy_tuples(Message, ["team_id", "date"], [(team.pk, WHEN)])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])  # rolled back each time
@given(text=_TEXT, html=_TEXT)
def test_insert_dicts_stores_any_text_of_plain_columns_as_the_orm_reads_it(team: Any, text: str, html: str) -> None:
    from mailroom.conversations.models import MessageBody

    with transaction.atomic():
        m = MessageFactory(team=team)
        insert_dicts(MessageBody, [{"message_id": m.pk, "text": text, "html": html, "reply_text": text + html}])
        assert MessageBody.objects.filter(message=m).values_list("text", "html", "reply_text").get() == (
            text, html, text + html)
        transaction.set_rollback(True)
