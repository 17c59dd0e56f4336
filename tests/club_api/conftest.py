"""Fixtures for the reference club-api: settings on the test servers, known rows, a client.

`club_rows` inserts a small, hand-written data set (below) so every test can
name its users, tokens and events; the seed generator has its own tests.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import asyncpg
import pytest

from examples.club_api.app import CONFIG_DIR, create_app
from legacy_compat import Settings, load_settings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from aiohttp import web
    from aiohttp.test_utils import TestClient

    ClientFactory = Callable[[web.Application], Awaitable[TestClient[web.Request, web.Application]]]

# Epoch seconds of the fixed instants below.
ALICE_CREATED = 1_600_000_000  # 2020-09-13 12:26:40 UTC
PADEL_STARTS = 1_767_261_600  # 2026-01-01 10:00:00, stored as naive timestamp
UPDATED = 1_700_000_000

ROWS_SQL = """
INSERT INTO users (id, name, email, profile, active, created_at) VALUES
  (1, 'Alice', 'alice@club.example',
   '{"city": "Riga", "sports": ["padel", "yoga"], "contact": {"phone": "+371000"}}',
   true, to_timestamp(1600000000)),
  (2, 'Борис', 'boris@club.example', '{"city": "Kazan"}', true, to_timestamp(1600000100)),
  (3, 'Carol', 'carol@club.example', '{}', false, to_timestamp(1600000200));
INSERT INTO sessions (token, user_id, expires_at) VALUES
  ('token-alice', 1, NULL),
  ('token-boris', 2, NULL),
  ('token-carol', 3, NULL),
  ('token-expired', 1, now() - interval '1 hour');
INSERT INTO events (id, title, meta, starts_at, capacity, active, updated_at) VALUES
  (1, 'Open padel', '{"venue": {"name": "North Court"}, "tags": ["open"]}',
   '2026-01-01 10:00:00', 2, true, to_timestamp(1700000000)),
  (2, 'Closed yoga', '{}', '2026-01-02 09:00:00', 10, false, to_timestamp(1700000000)),
  (3, 'Tiny run', '{"price": {"amount": 0}}', '2026-01-03 08:00:00', 1, true, to_timestamp(1700000000)),
  (4, 'Big ride', '{}', '2026-01-04 07:30:00', 50, true, to_timestamp(1700000000));
INSERT INTO registrations (id, user_id, event_id, created_at) VALUES
  (1, 2, 3, to_timestamp(1700000500));
SELECT setval(pg_get_serial_sequence('users', 'id'), 3);
SELECT setval(pg_get_serial_sequence('events', 'id'), 4);
SELECT setval(pg_get_serial_sequence('registrations', 'id'), 1);
"""

ALICE = {"Authorization": "Bearer token-alice"}
BORIS = {"Authorization": "Bearer token-boris"}
CAROL = {"Authorization": "Bearer token-carol"}  # an inactive user
EXPIRED = {"Authorization": "Bearer token-expired"}


@pytest.fixture
async def club_rows(pg_dsn: str) -> str:
    """The test database with the rows above; returns its DSN."""
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute(ROWS_SQL)
    finally:
        await conn.close()
    return pg_dsn


@pytest.fixture
async def db(club_rows: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection to the test database, for changes behind the app's back."""
    conn = await asyncpg.connect(club_rows)
    yield conn
    await conn.close()


def club_settings(pg_dsn: str, redis_url: str, **legacy: str) -> Settings:
    """The bundled config pointed at the test servers, with a short PgQueue debounce."""
    environ = {
        "CLUB_PG__CLUB__DSN": pg_dsn,
        "CLUB_SETTINGS__REDIS_URL": redis_url,
        "CLUB_SETTINGS__PGQUEUE_DEBOUNCE": "0.05",
    }
    environ |= {f"CLUB_SETTINGS__{key}": value for key, value in legacy.items()}
    return load_settings(CONFIG_DIR, environ=environ)


@pytest.fixture
def settings(club_rows: str, redis_url: str) -> Settings:
    return club_settings(club_rows, redis_url)


@pytest.fixture
async def client(
    settings: Settings, redis_client: object, aiohttp_client: ClientFactory
) -> TestClient[web.Request, web.Application]:
    """A client of one club-api instance (Redis flushed around the test)."""
    return await aiohttp_client(create_app(settings))
