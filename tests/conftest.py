"""Real servers for the whole suite.

PostgreSQL and a Redis-compatible server come from `CLUB_TEST_PG_DSN` and
`CLUB_TEST_REDIS_URL` when set, otherwise from the embedded wheels, started
once per run. Every test gets its own database cloned from a template that
holds the schemas listed in `TEMPLATE_SCHEMAS`, and a flushed Redis database.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import redis.asyncio as aioredis
import redis.exceptions

from examples.devservices import DevServices, ServiceStartError, start_services
from legacy_compat import Settings, load_settings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

ROOT = Path(__file__).resolve().parent.parent

# SQL files applied, in order, to the template database every test database
# is cloned from. Files that do not exist yet are skipped, so a package can add
# its schema here in the same commit that creates it.
TEMPLATE_SCHEMAS: tuple[Path, ...] = (
    ROOT / "examples" / "club_api" / "schema.sql",
    ROOT / "legacy_compat" / "sql" / "outbox.sql",
)


def database_dsn(server_dsn: str, database: str) -> str:
    """The DSN of another database on the same server."""
    return urlunsplit(urlsplit(server_dsn)._replace(path=f"/{database}"))


_SERVER_VARIABLES = "set CLUB_TEST_PG_DSN / CLUB_TEST_REDIS_URL to reachable servers, or unset them to use embedded ones"


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))


async def _probe(pg_dsn: str, redis_url: str) -> None:
    """Connect to both servers once, so a wrong variable fails the run at once, not every test."""
    try:
        conn = await asyncpg.connect(pg_dsn, timeout=10)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        msg = f"cannot reach PostgreSQL at {_without_password(pg_dsn)}: {type(exc).__name__}: {exc}"
        raise ServiceStartError(msg) from exc
    await conn.close()
    client = aioredis.from_url(redis_url, socket_connect_timeout=10)
    try:
        await client.ping()
    except (OSError, redis.exceptions.RedisError) as exc:
        msg = f"cannot reach Redis at {_without_password(redis_url)}: {type(exc).__name__}: {exc}"
        raise ServiceStartError(msg) from exc
    finally:
        await client.aclose()


@pytest.fixture(scope="session")
def dev_services() -> Iterator[DevServices]:
    try:
        services = start_services(
            pg_dsn=os.environ.get("CLUB_TEST_PG_DSN") or None,
            redis_url=os.environ.get("CLUB_TEST_REDIS_URL") or None,
        )
    except ServiceStartError as exc:
        pytest.exit(f"{exc} ({_SERVER_VARIABLES})", returncode=3)
    try:
        asyncio.run(_probe(services.pg_dsn, services.redis_url))
    except ServiceStartError as exc:
        services.close()
        pytest.exit(f"{exc} ({_SERVER_VARIABLES})", returncode=3)
    yield services
    services.close()


@pytest.fixture(scope="session")
def pg_server_dsn(dev_services: DevServices) -> str:
    """DSN of the maintenance database on the test server (a role with CREATEDB)."""
    return dev_services.pg_dsn


@pytest.fixture(scope="session")
def redis_url(dev_services: DevServices) -> str:
    return dev_services.redis_url


async def _create_template(server_dsn: str, name: str) -> None:
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    conn = await asyncpg.connect(database_dsn(server_dsn, name))
    try:
        for schema in TEMPLATE_SCHEMAS:
            if schema.exists():
                await conn.execute(schema.read_text(encoding="utf-8"))
    finally:
        await conn.close()


async def _drop_database(server_dsn: str, name: str) -> None:
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture(scope="session")
def pg_template(pg_server_dsn: str) -> Iterator[str]:
    """Name of the template database; unique per run so parallel runs never collide."""
    name = f"club_tpl_{uuid.uuid4().hex[:12]}"
    asyncio.run(_create_template(pg_server_dsn, name))
    yield name
    asyncio.run(_drop_database(pg_server_dsn, name))


@pytest.fixture
async def pg_dsn(pg_server_dsn: str, pg_template: str) -> AsyncIterator[str]:
    """DSN of a fresh database for this test, cloned from the template."""
    name = f"club_t_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(pg_server_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"')
    finally:
        await admin.close()
    yield database_dsn(pg_server_dsn, name)
    await _drop_database(pg_server_dsn, name)


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A client on the test Redis database, flushed before and after the test."""
    client = aioredis.from_url(redis_url)
    await client.flushdb()
    yield client
    await client.flushdb()
    await client.aclose()


@pytest.fixture
def config_dir(tmp_path: Path, pg_dsn: str, redis_url: str) -> Path:
    """A complete legacy config dir (settings.toml, pg.toml, info.toml) for this test's servers."""
    root = tmp_path / "config"
    root.mkdir()
    (root / "settings.toml").write_text(
        f'MAX_TRANSACTION_TIME = 5\nREDIS_URL = "{redis_url}"\nSECRET_KEY = "test-secret"\n',
        encoding="utf-8",
    )
    (root / "pg.toml").write_text(
        f'[club]\ndsn = "{pg_dsn}"\nmin_size = 1\nmax_size = 4\n\n'
        '[club.server_settings]\napplication_name = "club-tests"\n',
        encoding="utf-8",
    )
    (root / "info.toml").write_text('name = "club-api"\nversion = "0.0.0-test"\n', encoding="utf-8")
    return root


@pytest.fixture
def settings(config_dir: Path) -> Settings:
    """`load_settings(config_dir)` with no environment overrides."""
    return load_settings(config_dir, environ={})
