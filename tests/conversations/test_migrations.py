"""Migrations that move data: run backwards and forwards on the test database."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from mailroom.conversations.models import MessageBody
from tests.factories import MessageFactory

pytestmark = pytest.mark.django_db(transaction=True)


def _migrate(target: list[tuple[str, str]]) -> Any:
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(target)
    return executor.loader.project_state(target).apps


def test_message_bodies_move_to_their_own_table_and_back(team: Any) -> None:
    parsed = MessageFactory(team=team)
    unparsed = MessageFactory(team=team)
    MessageBody.objects.create(message=parsed, text="Добрый день!\n", html="<p>Добрый день!</p>", reply_text="Добрый день!\n")
    try:
        old = _migrate([("conversations", "0006_parsed_date_index")])  # bodies back in the message rows
        rows = dict(old.get_model("conversations", "Message").objects.values_list("id", "html"))
        assert rows == {parsed.pk: "<p>Добрый день!</p>", unparsed.pk: ""}
        _migrate([("conversations", "0007_message_body")])
    finally:
        _migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())
    assert list(MessageBody.objects.values_list("message_id", "text", "html", "reply_text")) == [
        (parsed.pk, "Добрый день!\n", "<p>Добрый день!</p>", "Добрый день!\n")
    ]


def test_large_columns_are_compressed_with_lz4_on_postgresql() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("a PostgreSQL column setting (SQLite has no compression of its own)")
    with connection.cursor() as cur:
        cur.execute(
            "SELECT c.relname, a.attname, a.attcompression FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
            "WHERE c.relname IN ('conversations_messageraw', 'conversations_messagebody') "
            "AND a.attname IN ('data', 'text', 'html', 'reply_text') ORDER BY 1, 2"
        )
        assert cur.fetchall() == [
            ("conversations_messagebody", "html", "l"),
            ("conversations_messagebody", "reply_text", "l"),
            ("conversations_messagebody", "text", "l"),
            ("conversations_messageraw", "data", "l"),
        ]
