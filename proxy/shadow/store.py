"""The PostgreSQL store of shadow results, shared by every proxy replica.

Schema `club_proxy_shadow`, built by the numbered files `sql/NNN_*.sql`
(applied once each, recorded in `schema_migrations`, under an advisory
transaction lock so replicas starting together are safe). Counts are
additive upserts (`n = n + excluded.n`), so whichever replica is asked, the
totals are the same. A write is one transaction under a second advisory
lock: the per-route group bound is checked against what is stored, and
groups past it are counted in `groups_dropped` instead.

Every driver failure leaves as `ShadowStoreError` (the SQLSTATE kept): the
caller (`ShadowBook`) keeps its deltas and tries again later. The pool holds
one connection at first and at most two; it keeps no floor of connections,
so an outage is not retried (and logged) by asyncpg behind the book's back.
"""

from __future__ import annotations

import asyncio
import functools
import re
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Final

import asyncpg

from proxy.errors import ProxyError
from proxy.shadow._rows import StoredRoute, WriteRows, noise_tally, read_tally, to_time

if TYPE_CHECKING:
    from collections.abc import Collection, Iterator, Mapping

    from asyncpg.pool import PoolConnectionProxy

    from proxy.routing.model import Shadow, ShadowStore
    from proxy.shadow._tally import Tally

__all__ = ["PgStore", "ShadowStoreError", "StoredRoute", "migrations", "queries"]

CONNECT_TIMEOUT: Final = 3.0
COMMAND_TIMEOUT: Final = 10.0
CLOSE_TIMEOUT: Final = 2.0
_SQL: Final = Path(__file__).parent / "sql"

# What a driver call can raise: a server error, a dead connection or misuse
# (InterfaceError), a network failure (OSError), a timeout.
_DRIVER_ERRORS: Final = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)
# The schema is gone (a database dropped and created again): migrate again.
_SCHEMA_GONE: Final = (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError)


class ShadowStoreError(ProxyError):
    """The shadow results store cannot be reached or refused a statement."""

    def __init__(self, message: str, *, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


@contextmanager
def _translate(action: str) -> Iterator[None]:
    """Driver errors of the block as `ShadowStoreError`, cause attached."""
    try:
        yield
    except _DRIVER_ERRORS as exc:
        sqlstate = exc.sqlstate if isinstance(exc, asyncpg.PostgresError) else None
        msg = f"shadow store: {action}: {type(exc).__name__}: {str(exc) or 'timed out'}"
        raise ShadowStoreError(msg, sqlstate=sqlstate) from exc


@functools.cache
def queries() -> Mapping[str, str]:
    """The `-- name:` blocks of sql/queries.sql (read once, on first use)."""
    text = (_SQL / "queries.sql").read_text(encoding="utf-8")
    blocks = re.split(r"^-- name: (\w+)\n", text, flags=re.MULTILINE)[1:]
    return dict(zip(blocks[::2], (sql.strip() for sql in blocks[1::2]), strict=True))


def migrations() -> list[tuple[int, str]]:
    """(version, SQL) of every `sql/NNN_name.sql`, in version order."""
    files = _SQL.glob("[0-9][0-9][0-9]_*.sql")
    return sorted((int(path.name[:3]), path.read_text(encoding="utf-8")) for path in files)


class PgStore:
    """The results store on one DSN; `connect()` before use, `close()` after."""

    def __init__(self, config: ShadowStore) -> None:
        self._config = config
        self._pool: asyncpg.Pool[asyncpg.Record] | None = None
        self._migrated = False

    @property
    def connected(self) -> bool:
        """True once a pool exists (its connection may still have been lost since)."""
        return self._pool is not None

    async def connect(self) -> None:
        """Open the pool (if not yet) and apply the migrations (if not yet)."""
        if self._pool is None:
            with _translate("connect"):
                self._pool = await asyncpg.create_pool(
                    self._config.dsn,
                    init_size=1,
                    min_size=0,
                    max_size=2,
                    timeout=CONNECT_TIMEOUT,
                    command_timeout=COMMAND_TIMEOUT,
                    server_settings={"application_name": "club-proxy-shadow"},
                )
        if not self._migrated:
            await self._migrate()

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await pool.close()
            except (TimeoutError, *_DRIVER_ERRORS):
                # A connection still busy (or already broken): do not wait for it.
                pool.terminate()

    async def _migrate(self) -> None:
        pool = self._require()
        q = queries()
        with _translate("migrate"):
            async with pool.acquire(timeout=CONNECT_TIMEOUT) as conn, conn.transaction():
                await conn.execute(q["lock_migrations"])
                await conn.execute(q["create_migrations"])
                done = {row["version"] for row in await conn.fetch(q["applied_versions"])}
                for version, sql in migrations():
                    if version not in done:
                        await conn.execute(sql)
                        await conn.execute(q["record_migration"], version)
        self._migrated = True

    def _require(self) -> asyncpg.Pool[asyncpg.Record]:
        if self._pool is None:
            msg = "shadow store: not connected"
            raise ShadowStoreError(msg)
        return self._pool

    @contextmanager
    def _schema_watch(self) -> Iterator[None]:
        try:
            yield
        except ShadowStoreError as exc:
            if isinstance(exc.__cause__, _SCHEMA_GONE):
                self._migrated = False
            raise

    async def write(
        self,
        batch: Tally,
        *,
        resets: Collection[str],
        routes: Mapping[str, Shadow],
        now: float,
    ) -> Tally:
        """Write `batch` (and the `resets` before it) in one transaction; the shared noise after."""
        await self.connect()
        q = queries()
        with self._schema_watch(), _translate("write"):
            async with self._require().acquire(timeout=CONNECT_TIMEOUT) as conn, conn.transaction():
                await conn.execute(q["lock_writes"])
                if resets:
                    await conn.execute(q["reset_routes"], list(resets))
                await conn.execute(q["delete_expired"], to_time(now - self._config.retention))
                rows = await conn.fetch(q["stored_signatures"], list(batch.routes))
                stored = {(row["route_id"], row["signature"]) for row in rows}
                await _write_rows(conn, WriteRows.of(batch, stored, routes, now=now))
                noise = await conn.fetch(q["noise_stats"])
        return noise_tally(noise)

    async def read(
        self, route_id: str | None, *, examples: bool
    ) -> tuple[Tally, dict[str, StoredRoute]]:
        """The stored totals of one route (or all), as one snapshot."""
        await self.connect()
        q = queries()
        with self._schema_watch(), _translate("read"):
            async with (
                self._require().acquire(timeout=CONNECT_TIMEOUT) as conn,
                conn.transaction(isolation="repeatable_read", readonly=True),
            ):
                routes = await conn.fetch(q["read_routes"], route_id)
                outcomes = await conn.fetch(q["read_outcomes"], route_id)
                groups = await conn.fetch(q["read_groups"], route_id)
                kept = await conn.fetch(q["read_examples"], route_id) if examples else []
        return read_tally(routes, outcomes, groups, kept)

    async def reset(self, route_id: str) -> bool:
        """Delete the route's rows; False when it had none."""
        await self.connect()
        q = queries()
        with self._schema_watch(), _translate("reset"):
            async with self._require().acquire(timeout=CONNECT_TIMEOUT) as conn, conn.transaction():
                await conn.execute(q["lock_writes"])
                existed = bool(await conn.fetchval(q["route_exists"], route_id))
                await conn.execute(q["reset_routes"], [route_id])
        return existed


async def _write_rows(conn: PoolConnectionProxy[asyncpg.Record], rows: WriteRows) -> None:
    q = queries()
    for name, args in (
        ("upsert_route", rows.routes),
        ("upsert_outcome", rows.outcomes),
        ("upsert_group", rows.groups),
        ("add_example", rows.examples),
        ("set_latest_example", rows.latest),
    ):
        if args:
            await conn.executemany(q[name], args)
