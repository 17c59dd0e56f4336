"""The Tortoise models against the live legacy tables: names, types, nullability.

The legacy schema (examples/club_api/schema.sql, applied to every test
database) is the truth; a model that drifts from it fails here, in both
directions (a model field with no column, a column no model knows).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import asyncpg
import pytest
from tortoise import Tortoise, fields

from new_services.db import tortoise_config
from new_services.events.models import Event
from new_services.registrations.models import Registration
from new_services.users.models import Session, User

if TYPE_CHECKING:
    from tortoise.models import Model

MODELS: tuple[type[Model], ...] = (User, Session, Event, Registration)

# Tortoise's PostgreSQL SQL_TYPE -> information_schema.columns.data_type.
PG_TYPES = {
    "BIGINT": "bigint",
    "INT": "integer",
    "TEXT": "text",
    "JSONB": "jsonb",
    "BOOL": "boolean",
    "TIMESTAMPTZ": "timestamp with time zone",
    "TIMESTAMP": "timestamp without time zone",
}


def model_columns(model: type[Model]) -> dict[str, tuple[str, bool]]:
    """column -> (data_type, nullable) as the model declares it."""
    columns: dict[str, tuple[str, bool]] = {}
    for name in model._meta.db_fields:
        field = model._meta.fields_map[model._meta.fields_db_projection_reverse[name]]
        if isinstance(field, fields.relational.ForeignKeyFieldInstance):
            continue  # its `<name>_id` source field is listed too
        sql_type = field.get_for_dialect("postgres", "SQL_TYPE")
        columns[name] = (PG_TYPES.get(sql_type, sql_type), field.null)
    return columns


async def live_columns(conn: asyncpg.Connection, table: str) -> dict[str, tuple[str, bool]]:
    rows = await conn.fetch(
        "SELECT column_name, data_type, is_nullable FROM information_schema.columns"
        " WHERE table_schema = 'public' AND table_name = $1",
        table,
    )
    return {r["column_name"]: (r["data_type"], r["is_nullable"] == "YES") for r in rows}


@pytest.fixture
async def orm(settings):
    ctx = await Tortoise.init(config=tortoise_config(settings))
    yield ctx
    await ctx.close_connections()


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
async def test_model_matches_live_table(orm, pg_dsn: str, model: type[Model]) -> None:
    conn = await asyncpg.connect(pg_dsn)
    try:
        live = await live_columns(conn, model._meta.db_table)
    finally:
        await conn.close()
    assert live, f"table {model._meta.db_table} does not exist"
    assert model_columns(model) == live


async def test_drift_is_detected(orm, pg_dsn: str) -> None:
    # The check itself must be able to fail: a column changed behind the model's back.
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute("ALTER TABLE events ALTER COLUMN starts_at TYPE timestamptz")
        await conn.execute("ALTER TABLE events ADD COLUMN venue text")
        live = await live_columns(conn, "events")
    finally:
        await conn.close()
    declared = model_columns(Event)
    assert declared != live
    assert declared["starts_at"] == ("timestamp without time zone", False)
    assert "venue" not in declared
