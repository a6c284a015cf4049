"""PostgreSQL: compress the large columns (raw bytes, bodies) with lz4 instead of pglz.

pglz, PostgreSQL's default, compresses at a few tens of MB/s in the server process, and the raw bytes
of every message go through it: on bench/import_bench.py (20,000 messages, 1.35 GB, raw bytes in the
database) the import ran at 244 msgs/s with pglz and 367 with lz4. Existing values stay as they are
(both read alike); a server without lz4 (built without it, or older than 14) keeps pglz. SQLite: no-op.
"""

from typing import Any

from django.db import DatabaseError, migrations, transaction

COLUMNS = [
    ("conversations_messageraw", "data"),
    ("conversations_messagebody", "text"),
    ("conversations_messagebody", "html"),
    ("conversations_messagebody", "reply_text"),
]


def _set(schema_editor: Any, method: str) -> None:
    conn = schema_editor.connection
    if conn.vendor != "postgresql" or conn.pg_version < 140000:
        return
    qn = conn.ops.quote_name
    try:
        with transaction.atomic(using=conn.alias), conn.cursor() as cur:  # a savepoint: a refusal is harmless
            for table, column in COLUMNS:
                cur.execute(f"ALTER TABLE {qn(table)} ALTER COLUMN {qn(column)} SET COMPRESSION {method}")
    except DatabaseError:  # "compression method lz4 not supported": this server keeps pglz
        pass


def forwards(apps: Any, schema_editor: Any) -> None:
    _set(schema_editor, "lz4")


def backwards(apps: Any, schema_editor: Any) -> None:
    _set(schema_editor, "DEFAULT")


class Migration(migrations.Migration):
    dependencies = [
        ("conversations", "0007_message_body"),
    ]

    operations = [migrations.RunPython(forwards, backwards)]
