"""PgBank: the legacy `api.pg.<db>.fetchrow/fetch/fetchval/execute` over asyncpg.

One pool per pg.toml database, owned by PgBank alone, with the legacy codecs
installed in the pool's `init` hook (`_codecs.py`), so they never reach
Tortoise's connections. `database_error` is the one place driver errors become
`DatabaseError`s, keeping the SQLSTATE, the constraint name and the cause.

`transaction()` runs under `MAX_TRANSACTION_TIME`: past it the body is cancelled,
the transaction rolled back and `TransactionTimeout` raised; the connection goes
back to the pool healthy. The server-side backstop
(`idle_in_transaction_session_timeout`) travels in the pool's `server_settings`,
because `SET` on a pooled connection is undone by `RESET ALL` on release.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from typing import TYPE_CHECKING, Any, Self

import asyncpg

from legacy_compat._codecs import install_codecs
from legacy_compat.errors import DatabaseError, TransactionTimeout

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
    from types import TracebackType

    from aiohttp import web
    from asyncpg.pool import PoolConnectionProxy

    from legacy_compat._config import DatabaseSettings, Settings

__all__ = ["Database", "PgBank", "Transaction", "database_error", "translate_errors"]

logger = logging.getLogger(__name__)

# What a driver call can raise besides PostgresError: API misuse or a dead
# connection (InterfaceError), a network failure (OSError), command_timeout.
_CLIENT_ERRORS = (asyncpg.InterfaceError, asyncpg.InternalClientError, OSError, TimeoutError)
_DRIVER_ERRORS = (asyncpg.PostgresError, *_CLIENT_ERRORS)


def database_error(exc: BaseException, database: str) -> DatabaseError:
    """The `DatabaseError` for a driver error: the one place the mapping lives."""
    if isinstance(exc, asyncpg.PostgresError):
        msg = f"{database}: {exc.sqlstate}: {exc}"
        constraint = getattr(exc, "constraint_name", None)
        return DatabaseError(msg, sqlstate=exc.sqlstate, constraint_name=constraint)
    return DatabaseError(f"{database}: {type(exc).__name__}: {str(exc) or 'timed out'}")


@contextmanager
def translate_errors(database: str) -> Iterator[None]:
    """Re-raise driver errors from the block as `DatabaseError`, cause attached.

    Wrap driver calls only, never caller code: a `TimeoutError` of the caller's
    own must not turn into a database error.
    """
    try:
        yield
    except _DRIVER_ERRORS as exc:
        raise database_error(exc, database) from exc


class _Queries:
    """The four legacy query methods, on a pool (Database) or a connection (Transaction).

    They catch inline rather than through `translate_errors`: a generator context
    manager costs about a microsecond per query on the hot path.
    """

    __slots__ = ("_target", "name")

    def __init__(
        self, name: str, target: asyncpg.Pool[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]
    ) -> None:
        self.name = name
        self._target = target

    async def fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        """The first row, or None when there is none."""
        try:
            return await self._target.fetchrow(sql, *args)
        except _DRIVER_ERRORS as exc:
            raise database_error(exc, self.name) from exc

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        """All rows."""
        try:
            return await self._target.fetch(sql, *args)
        except _DRIVER_ERRORS as exc:
            raise database_error(exc, self.name) from exc

    async def fetchval(self, sql: str, *args: Any, column: int = 0) -> Any:
        """One value of the first row (None when there is no row)."""
        try:
            return await self._target.fetchval(sql, *args, column=column)
        except _DRIVER_ERRORS as exc:
            raise database_error(exc, self.name) from exc

    async def execute(self, sql: str, *args: Any) -> str:
        """Run a statement; returns the command tag, e.g. "INSERT 0 1"."""
        try:
            return await self._target.execute(sql, *args)
        except _DRIVER_ERRORS as exc:
            raise database_error(exc, self.name) from exc


class Transaction(_Queries):
    """The connection of an open transaction (`async with db.transaction() as tx`)."""

    __slots__ = ()

    @property
    def connection(self) -> PoolConnectionProxy[asyncpg.Record]:
        """The raw asyncpg connection, for what the four methods do not cover."""
        return self._target  # type: ignore[return-value]  # always a connection here


class Database(_Queries):
    """One pg.toml database: `bank.club`. Queries run on its own pool."""

    __slots__ = ("_max_transaction_time",)

    def __init__(
        self, name: str, pool: asyncpg.Pool[asyncpg.Record], *, max_transaction_time: float
    ) -> None:
        super().__init__(name, pool)
        self._max_transaction_time = max_transaction_time

    @property
    def pool(self) -> asyncpg.Pool[asyncpg.Record]:
        """The asyncpg pool (with the legacy codecs installed)."""
        return self._target  # type: ignore[return-value]  # always a pool here

    @asynccontextmanager
    async def transaction(self, *, max_time: float | None = None) -> AsyncIterator[Transaction]:
        """A transaction on one connection, committed when the block ends normally.

        The whole block (BEGIN to COMMIT) may run `max_time` seconds, by default
        MAX_TRANSACTION_TIME; past that it is cancelled, rolled back, and
        `TransactionTimeout` is raised.
        """
        limit = self._max_transaction_time if max_time is None else max_time
        with translate_errors(self.name):
            conn = await self.pool.acquire()
        try:
            guard = asyncio.timeout(limit)
            try:
                async with guard, self._transaction(conn) as tx:
                    yield tx
            except TimeoutError as exc:
                if not guard.expired():
                    raise  # the caller's own timeout, not ours
                await self._settle(conn)
                logger.warning(
                    "legacy_compat.pgbank.transaction_timeout",
                    extra={"database": self.name, "max_transaction_time": limit},
                )
                msg = (
                    f"{self.name}: transaction ran longer than {limit}s; cancelled and rolled back"
                )
                raise TransactionTimeout(msg) from exc
        finally:
            await self.pool.release(conn)

    @asynccontextmanager
    async def _transaction(
        self, conn: PoolConnectionProxy[asyncpg.Record]
    ) -> AsyncIterator[Transaction]:
        # asyncpg's transaction driven as its own `async with` would drive it, by
        # hand so that a failed ROLLBACK never replaces the body's error. Managed
        # and closed through the object, it is never taken on release for a
        # leaked transaction ("Resetting connection with an active transaction").
        tx = conn.transaction()
        with translate_errors(self.name):
            await tx.__aenter__()  # BEGIN
        try:
            yield Transaction(self.name, conn)
        except BaseException:
            # Cancellation (the guard) lands here too: roll back before it propagates.
            await self._settle(conn, partial(tx.__aexit__, *sys.exc_info()))
            raise
        with translate_errors(self.name):
            await tx.__aexit__(None, None, None)  # COMMIT

    async def _settle(
        self,
        conn: PoolConnectionProxy[asyncpg.Record],
        rollback: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        """Leave `conn` outside any transaction, or close it if that is impossible.

        `rollback` is the transaction object's; without one (the guard fired
        outside the body, in BEGIN or COMMIT) a plain ROLLBACK, if still needed.
        """
        try:
            if conn.is_closed():
                return
            if rollback is not None:
                await rollback()
            elif conn.is_in_transaction():
                await conn.execute("ROLLBACK")
        except asyncpg.InterfaceError:
            # The connection is already gone: the server ended the session (e.g. the
            # idle-in-transaction backstop) and asyncpg detached it from the pool.
            return
        except _DRIVER_ERRORS as exc:
            # A connection in an unknown state must not go back to the pool.
            logger.warning(
                "legacy_compat.pgbank.rollback_failed",
                extra={"database": self.name, "error": repr(exc)},
            )
            conn.terminate()


async def _open(db: DatabaseSettings, max_transaction_time: float) -> Database:
    with translate_errors(db.name):
        pool = await asyncpg.create_pool(
            db.dsn,
            min_size=db.min_size,
            max_size=db.max_size,
            command_timeout=db.command_timeout,
            statement_cache_size=db.statement_cache_size,
            server_settings=dict(db.server_settings),
            init=install_codecs,
        )
    return Database(db.name, pool, max_transaction_time=max_transaction_time)


class PgBank:
    """Every pg.toml database as an attribute: `bank.club.fetchrow(sql, *args)`.

    Open with `bank = await PgBank.connect(settings)` and close with
    `await bank.close()`, or use `async with await PgBank.connect(settings) as bank`.
    """

    __slots__ = ("_databases",)

    def __init__(self, databases: Mapping[str, Database]) -> None:
        self._databases = dict(databases)

    @classmethod
    async def connect(cls, settings: Settings) -> Self:
        """Open one pool per database; on any failure close those already open."""
        opened: dict[str, Database] = {}
        try:
            for name, db in settings.databases.items():
                opened[name] = await _open(db, settings.max_transaction_time)
        except BaseException:
            await cls(opened).close()
            raise
        logger.info("legacy_compat.pgbank.connected", extra={"databases": list(opened)})
        return cls(opened)

    @classmethod
    def cleanup_ctx(
        cls, settings: Settings, key: web.AppKey[PgBank]
    ) -> Callable[[web.Application], AsyncIterator[None]]:
        """An aiohttp `cleanup_ctx` entry that keeps a connected bank under `app[key]`."""

        async def ctx(app: web.Application) -> AsyncIterator[None]:
            async with await cls.connect(settings) as bank:
                app[key] = bank
                yield

        return ctx

    def database(self, name: str) -> Database:
        """The database named `name` in pg.toml."""
        try:
            return self._databases[name]
        except KeyError:
            msg = f"no database {name!r} in pg.toml (have: {', '.join(self._databases)})"
            raise KeyError(msg) from None

    def __getattr__(self, name: str) -> Database:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self.database(name)
        except KeyError as exc:
            raise AttributeError(*exc.args) from None

    async def close(self) -> None:
        """Close every pool, waiting for connections in use to be released."""
        for db in self._databases.values():
            await db.pool.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
