"""The fixtures give real, isolated servers."""

from __future__ import annotations

from typing import TYPE_CHECKING

import asyncpg

if TYPE_CHECKING:
    import redis.asyncio as aioredis


async def test_each_test_gets_its_own_database(pg_dsn: str) -> None:
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute("CREATE TABLE isolation_probe (id int)")
        assert await conn.fetchval("SELECT count(*) FROM isolation_probe") == 0
    finally:
        await conn.close()


async def test_databases_do_not_leak_between_tests(pg_dsn: str) -> None:
    conn = await asyncpg.connect(pg_dsn)
    try:
        exists = await conn.fetchval("SELECT to_regclass('isolation_probe') IS NOT NULL")
        assert exists is False
    finally:
        await conn.close()


async def test_redis_starts_empty(redis_client: aioredis.Redis) -> None:
    assert await redis_client.dbsize() == 0
    await redis_client.set("probe", "1")
    assert await redis_client.get("probe") == b"1"
