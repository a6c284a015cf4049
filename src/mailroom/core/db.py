"""Bulk writes for the hot paths (import, parse, outbox).

``bulk_create`` and ``bulk_update`` compile every value of every row through the ORM's SQL compiler
(``bulk_update`` even builds a CASE per field and row); on the import path that costs more than the
work itself. These helpers send ONE fixed statement with ``executemany``: the driver prepares it
once (a fixed SQL text also keeps the statement cache from holding a batch's blobs alive)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.db import transaction

# Values of these field types go to the driver as they are (no per-value ORM conversion).
_DIRECT_TYPES = frozenset({
    "AutoField", "BigAutoField", "BigIntegerField", "BinaryField", "BooleanField", "CharField", "ForeignKey",
    "IntegerField", "PositiveBigIntegerField", "PositiveIntegerField", "PositiveSmallIntegerField",
    "SmallIntegerField", "TextField",
})


def _prep(fields: Sequence[Any], conn: Any) -> list[Any]:
    return [None if f.get_internal_type() in _DIRECT_TYPES else f for f in fields]


def insert_rows(model: Any, objs: Sequence[Any], *, ignore_conflicts: bool = False, chunk: int = 500) -> None:
    """INSERT new model instances (no RETURNING: callers find ids by a natural key)."""
    if not objs:
        return
    meta = model._meta
    fields = [f for f in meta.concrete_fields if not f.primary_key]
    auto = [f for f in fields if getattr(f, "auto_now", False) or getattr(f, "auto_now_add", False)]
    conn = transaction.get_connection()
    q = conn.ops.quote_name
    verb = "INSERT OR IGNORE INTO" if ignore_conflicts and conn.vendor == "sqlite" else "INSERT INTO"
    sql = "{} {} ({}) VALUES ({})".format(
        verb, q(meta.db_table), ", ".join(q(f.column) for f in fields), ", ".join(["%s"] * len(fields))
    )
    if ignore_conflicts and conn.vendor != "sqlite":
        sql += " ON CONFLICT DO NOTHING"
    conv = _prep(fields, conn)
    params: list[list[Any]] = []
    for obj in objs:
        for f in auto:
            f.pre_save(obj, add=True)
        row = []
        for f, c in zip(fields, conv, strict=True):
            v = getattr(obj, f.attname)
            row.append(v if c is None or v is None else c.get_db_prep_save(v, conn))
        params.append(row)
    with conn.cursor() as cur:
        for i in range(0, len(params), chunk):
            cur.executemany(sql, params[i : i + chunk])


def update_rows(model: Any, objs: Sequence[Any], fields: Sequence[str]) -> None:
    """UPDATE ... SET <fields> WHERE pk = %s for each object, with executemany."""
    if not objs:
        return
    meta = model._meta
    conn = transaction.get_connection()
    cols = [meta.get_field(f) for f in fields]
    sql = "UPDATE {} SET {} WHERE {} = %s".format(  # noqa: S608 - identifiers from model meta, quoted
        conn.ops.quote_name(meta.db_table),
        ", ".join(f"{conn.ops.quote_name(c.column)} = %s" for c in cols),
        conn.ops.quote_name(meta.pk.column),
    )
    conv = _prep(cols, conn)
    params = []
    for o in objs:
        row = []
        for f, c in zip(cols, conv, strict=True):
            v = getattr(o, f.attname)
            row.append(v if c is None or v is None else c.get_db_prep_save(v, conn))
        row.append(o.pk)
        params.append(row)
    with conn.cursor() as cur:
        cur.executemany(sql, params)
