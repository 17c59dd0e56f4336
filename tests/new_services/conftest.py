"""Twin databases and the two apps for the parity suite.

One database is seeded (the seed generator plus hand-written edge rows:
unicode, nulls, large jsonb, non-UTC and fractional times, infinity), then
cloned; club-api runs on one clone, new_services on the other, both on the
same Redis. Every request goes to both and the answers must be identical.
Writes keep the twins identical as long as both sides behave the same, and
the registrations' clock is frozen by a column default on both clones so a
write's `created_at` is the same on both sides.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import asyncpg
import pytest

from examples.club_api import seed
from examples.club_api.app import create_app as create_legacy_app
from new_services.app import create_app as create_new_app
from tests.club_api.conftest import club_settings
from tests.conftest import database_dsn

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import redis.asyncio as aioredis
    from aiohttp import ClientResponse
    from aiohttp.test_utils import TestClient

SEED = seed.SeedSize(users=120, events=40, registrations=300)
FROZEN_NOW = 1_767_225_600  # 2026-01-01T00:00:00Z, the registrations' created_at default

BIG_META = ", ".join(
    f'{{"slot": {i}, "coach": "Тренер №{i}", "note": "court {i % 7} · ok"}}' for i in range(3000)
)
EDGE_ROWS_SQL = f"""
INSERT INTO users (id, name, email, profile, active, created_at) VALUES
  (1001, 'Zoë "Q" </script> 🎾', 'зоя@club.example',
   '{{"a": null, "list": [null, true, 1.5e-7, 0.1, 18446744073709551615, -9223372036854775808],
     "text": "line\\nbreak \\"quoted\\" \\\\ tab\\t é 日本", "nested": {{"z": {{"y": []}}}}}}',
   true, '1969-12-31 23:59:59.5+00'),
  (1002, 'Inactive', 'inactive@club.example', '{{}}', false, 'infinity'),
  (1003, 'Tz', 'tz@club.example', '{{"tz": "+03"}}', true, '2024-03-31 02:30:00.999999+03'),
  (1004, '', 'empty@club.example', '[]', true, '-infinity');
INSERT INTO sessions (token, user_id, expires_at) VALUES
  ('tok-1001', 1001, now() + interval '1 day'),
  ('tok-1002', 1002, NULL),
  ('tok-1003', 1003, NULL),
  ('tok-expired', 1, now() - interval '1 hour');
INSERT INTO events (id, title, meta, starts_at, capacity, active, updated_at) VALUES
  (1001, 'Huge 🏓', '{{"slots": [{BIG_META}]}}', '2026-03-29 02:30:00', 1, true,
   '2025-06-01 12:00:00.75+05:30'),
  (1002, 'Zero places', '{{"ключ": "значение", "": ""}}', '2026-02-01 10:00:00', 0, true, now()),
  (1003, 'Closed', '{{}}', '2026-02-02 10:00:00', 10, false, now()),
  (1004, 'Forever', '{{"n": 1.0, "e": 1e-7}}', 'infinity', 5, true, '-infinity'),
  (1005, 'Past', 'null', '1960-01-01 00:00:00.25', 3, true, '1999-12-31 23:59:59.999999+00');
SELECT setval(pg_get_serial_sequence('users', 'id'), 1004);
SELECT setval(pg_get_serial_sequence('events', 'id'), 1005);
ALTER TABLE registrations ALTER COLUMN created_at SET DEFAULT to_timestamp({FROZEN_NOW});
"""


async def _create_from(server_dsn: str, name: str, template: str) -> str:
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    finally:
        await admin.close()
    return database_dsn(server_dsn, name)


async def _drop(server_dsn: str, name: str) -> None:
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def twin_dsns(pg_server_dsn: str, pg_dsn: str) -> AsyncIterator[tuple[str, str]]:
    """(legacy dsn, new dsn): pg_dsn seeded, and a clone of it."""
    conn = await asyncpg.connect(pg_dsn)
    try:
        await seed.load(conn, seed.generate(SEED))
        await conn.execute(EDGE_ROWS_SQL)
    finally:
        await conn.close()
    name = f"club_twin_{uuid.uuid4().hex[:16]}"
    twin = await _create_from(pg_server_dsn, name, urlsplit(pg_dsn).path.lstrip("/"))
    yield pg_dsn, twin
    await _drop(pg_server_dsn, name)


@dataclass(slots=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @classmethod
    async def read(cls, resp: ClientResponse) -> Answer:
        body = await resp.read()
        # Date changes every second and is no part of the contract.
        headers = {k: v for k, v in resp.headers.items() if k.lower() != "date"}
        return cls(resp.status, headers, body)


@dataclass(slots=True)
class Twins:
    """The two clients; `both()` sends one request to each (legacy first)."""

    legacy: TestClient[Any, Any]
    new: TestClient[Any, Any]
    redis: aioredis.Redis
    dsns: tuple[str, str]
    log: list[str] = field(default_factory=list)

    async def one(self, client: TestClient[Any, Any], method: str, path: str, **kw: Any) -> Answer:
        # Each side computes its own answer: no cached event detail from the other.
        await self.clear_cache()
        async with client.request(method, path, **kw) as resp:
            return await Answer.read(resp)

    async def both(self, method: str, path: str, **kw: Any) -> tuple[Answer, Answer]:
        legacy = await self.one(self.legacy, method, path, **kw)
        new = await self.one(self.new, method, path, **kw)
        return legacy, new

    async def clear_cache(self) -> None:
        keys = [k async for k in self.redis.scan_iter(match="club:event:*")]
        if keys:
            await self.redis.delete(*keys)


@pytest.fixture
async def twins(
    twin_dsns: tuple[str, str], redis_url: str, redis_client: aioredis.Redis, aiohttp_client: Any
) -> Twins:
    legacy_dsn, new_dsn = twin_dsns
    legacy = await aiohttp_client(create_legacy_app(club_settings(legacy_dsn, redis_url)))
    new = await aiohttp_client(create_new_app(club_settings(new_dsn, redis_url)))
    return Twins(legacy, new, redis_client, twin_dsns)


async def wait_for(predicate: Any, *, timeout: float = 20.0) -> None:
    """Poll an async predicate until true (no timing asserts: a generous deadline)."""
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            msg = "condition not met in time"
            raise TimeoutError(msg)
        await asyncio.sleep(0.02)
