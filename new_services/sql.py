"""Fixed SQL on Tortoise's own connection, for the hot request paths.

An ORM query costs Python work on every call: pypika rebuilds the SQL text
from the queryset, and `.values()` converts each row field by field; with the
extra queries the ORM shape implies (a count beside every page), that made the
new routes slower than club-api's raw SQL (profile and figures in
docs/new_services.md, Performance). The hot paths therefore run fixed SQL
through `execute_query` of the same Tortoise client: the same pool (never
PgBank's: no codecs, so jsonb arrives as text and timestamps as datetimes),
Tortoise's error translation (`IntegrityError`, ...), inside `in_transaction()`
when given its connection, and asyncpg's statement cache, which prepares each
text once per connection.

Select lists come from the models (`columns`), which the drift test holds to
schema.sql; the parity suite holds every statement's answers to club-api's.

Timestamp columns are selected as epoch seconds computed by PostgreSQL
(`epoch_sql`), never as datetimes: PostgreSQL stores years from 4714 BC to
294276, Python's datetime only 1 to 9999, and asyncpg raises OverflowError
decoding anything outside. The SQL follows PgBank's codec exactly (floor to
the second; infinity as `TIMESTAMP_INFINITY`, -infinity as
`TIMESTAMP_NEG_INFINITY`), so both sides read the same int from any row.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from tortoise.fields import DatetimeField

from legacy_compat import TIMESTAMP_INFINITY, TIMESTAMP_NEG_INFINITY
from new_services.fields import NaiveUTCDatetimeField

if TYPE_CHECKING:
    from asyncpg import Record
    from tortoise.backends.base.client import BaseDBAsyncClient
    from tortoise.models import Model

__all__ = ["active_page_sql", "columns", "epoch_sql", "fetch", "fetchrow", "jsonb"]


def epoch_sql(column: str, *, naive: bool) -> str:
    """SQL for a timestamp column as PgBank's int epoch seconds, for any stored value.

    `date_trunc` floors to the second before `extract`: extract(epoch) alone
    rounds its last digits near the end of the range (PostgreSQL 15 reads
    294276-12-31 23:59:59.999999 as ...6000, not ...5999). A timestamptz is
    truncated as its UTC wall clock, so the session TimeZone plays no part.
    """
    wall = column if naive else f"({column} AT TIME ZONE 'UTC')"
    return (
        f"CASE {column} WHEN 'infinity' THEN {TIMESTAMP_INFINITY}::bigint"
        f" WHEN '-infinity' THEN {TIMESTAMP_NEG_INFINITY}::bigint"
        f" ELSE extract(epoch FROM date_trunc('second', {wall}))::bigint END"
    )


def columns(
    model: type[Model], fields: tuple[str, ...], *, alias: str = "", epoch: bool = False
) -> str:
    """`a.col1, a.col2`: the model fields' column names, for a SELECT list.

    With `epoch`, timestamp fields are selected as int epoch seconds
    (`epoch_sql`) under their own column names.
    """
    meta = model._meta  # noqa: SLF001  (Tortoise's model metadata)
    prefix = f"{alias}." if alias else ""
    return ", ".join(
        _column(meta.fields_map[name], f"{prefix}{meta.fields_db_projection[name]}", epoch=epoch)
        for name in fields
    )


def _column(field: Any, column: str, *, epoch: bool) -> str:
    if not (epoch and isinstance(field, DatetimeField)):
        return column
    naive = isinstance(field, NaiveUTCDatetimeField)
    return f"{epoch_sql(column, naive=naive)} AS {column.rpartition('.')[2]}"


def active_page_sql(model: type[Model], fields: tuple[str, ...]) -> str:
    """One statement for a list endpoint: a page of `model` rows and the total.

    $1 is the `active` filter (NULL: no filter, so one statement serves both),
    $2 and $3 are LIMIT and OFFSET; rows come ordered by id, each with `total`;
    timestamps come as epoch seconds (`columns(..., epoch=True)`).
    The page is LEFT JOINed to the count so an empty page still brings its
    total, as one row whose `id` is NULL.
    """
    table = model._meta.db_table  # noqa: SLF001  (Tortoise's table name)
    where = "$1::boolean IS NULL OR active = $1"
    return f"""
    SELECT t.total, {columns(model, fields, alias="p")}
    FROM (SELECT count(*) AS total FROM {table} WHERE {where}) AS t
    LEFT JOIN LATERAL (
        SELECT {columns(model, fields, epoch=True)} FROM {table}
        WHERE {where}
        ORDER BY id LIMIT $2 OFFSET $3
    ) AS p ON true
    ORDER BY p.id
"""


async def fetch(db: BaseDBAsyncClient, sql: str, *args: Any) -> list[Record]:
    """All rows of a SELECT, as asyncpg Records."""
    _, rows = await db.execute_query(sql, list(args))
    return rows  # type: ignore[return-value]  # Tortoise annotates Records as dicts


async def fetchrow(db: BaseDBAsyncClient, sql: str, *args: Any) -> Record | None:
    """The first row of a SELECT, or None."""
    rows = await fetch(db, sql, *args)
    return rows[0] if rows else None


def jsonb(text: str | None) -> Any:
    """A jsonb column read without codecs, decoded as Tortoise's JSONField does (orjson)."""
    return None if text is None else orjson.loads(text)
