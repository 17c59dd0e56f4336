"""Create the club database, apply schema.sql and load seed data (tooling, not the app).

Uses plain asyncpg connections: COPY needs asyncpg's built-in codecs, not
PgBank's legacy ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import redis.asyncio as aioredis

from examples.club_api import seed
from examples.club_api.app.models.notification import EVENT_CACHE_PREFIX

__all__ = [
    "SCHEMA",
    "apply_schema",
    "apply_sql",
    "clear_event_cache",
    "ensure_database",
    "load_seed",
    "with_database",
]

SCHEMA: Final = Path(__file__).resolve().parent / "schema.sql"
_DUPLICATE_DATABASE: Final = "42P04"


def with_database(dsn: str, database: str) -> str:
    """The DSN of another database on the same server."""
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{database}"))


def _database_name(dsn: str) -> str:
    name = urlsplit(dsn).path.lstrip("/")
    if not name:
        msg = f"the DSN names no database: {urlsplit(dsn)._replace(netloc='…').geturl()}"
        raise ValueError(msg)
    return name


async def ensure_database(dsn: str, *, maintenance_db: str = "postgres") -> bool:
    """Create the DSN's database if it does not exist; True when it was created."""
    name = _database_name(dsn)
    conn = await asyncpg.connect(with_database(dsn, maintenance_db))
    try:
        if await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            return False
        quoted = '"' + name.replace('"', '""') + '"'
        try:
            await conn.execute(f"CREATE DATABASE {quoted}")
        except asyncpg.DuplicateDatabaseError:
            return False  # created concurrently by someone else: fine
        return True
    finally:
        await conn.close()


async def apply_sql(dsn: str, path: Path) -> None:
    """Run one SQL script (no psql meta-commands) on the DSN's database."""
    sql = path.read_text(encoding="utf-8")  # noqa: ASYNC240  (a small local file, once at setup)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def apply_schema(dsn: str) -> None:
    """Apply schema.sql (idempotent) to the DSN's database."""
    await apply_sql(dsn, SCHEMA)


async def load_seed(dsn: str, size: seed.SeedSize, *, seed_value: int = 42) -> dict[str, int]:
    """Replace the club tables' rows with the deterministic seed; the row counts."""
    data = seed.generate(size, seed=seed_value)
    conn = await asyncpg.connect(dsn)
    try:
        return await seed.load(conn, data)
    finally:
        await conn.close()


async def clear_event_cache(redis_url: str) -> int:
    """Drop every cached event detail (after a reseed they describe other rows)."""
    client = aioredis.from_url(redis_url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{EVENT_CACHE_PREFIX}*", count=1000)]
        return int(await client.delete(*keys)) if keys else 0
    finally:
        await client.aclose()
