"""The reconnecting LISTEN loop under PgQueue.

One dedicated asyncpg connection, never a pooled one: a pool's release runs
`UNLISTEN *` and drops listeners (compat-findings §1.3). It must reach
PostgreSQL directly or through pgbouncer in `pool_mode=session` (§1.4).

The loop: connect, LISTEN, call the `on_connect` hook, then wait for the
connection to be lost (asyncpg's termination listener) with a timeout and run
`SELECT 1` whenever the wait times out, so a silently dead network path is
noticed too. On any loss it logs, counts, backs off and connects again,
forever, until `stop()`. Notifications sent while no connection was listening
are gone (that is PostgreSQL, not this loop); `on_connect(reconnect=True)` is
the caller's cue to re-read state, which is how the durable mode catches up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

import asyncpg

from legacy_compat.errors import QueueError

if TYPE_CHECKING:
    from collections.abc import Sequence

    # asyncpg's classes are generic only in its stubs.
    Connection: TypeAlias = asyncpg.Connection[asyncpg.Record]

__all__ = ["Backoff", "Listener", "ListenerStats", "Notify", "OnConnect"]

logger = logging.getLogger(__name__)

# What a lost or unreachable server raises. Anything else is a bug and ends
# the loop loudly rather than spinning on it.
_CONNECTION_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


class Notify(Protocol):
    """Receives each notification; called on the event loop, must not block."""

    def __call__(self, *, channel: str, payload: str) -> None: ...


class OnConnect(Protocol):
    """Runs after every (re)connect, once LISTEN is in place."""

    async def __call__(self, connection: Connection, *, reconnect: bool) -> None: ...


class _ConnectionLost(Exception):
    """The server closed the listening connection."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Backoff:
    """Delay before reconnect attempt n: `initial * 2**(n-1)`, capped at `maximum`.

    `jitter` is the fraction of each delay that is randomised, so that many
    instances cut off by one server restart do not reconnect in lockstep.
    """

    initial: float = 0.1
    maximum: float = 10.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum:
            msg = f"Backoff needs 0 < initial <= maximum, got {self.initial} and {self.maximum}"
            raise ValueError(msg)
        if not 0 <= self.jitter <= 1:
            msg = f"Backoff jitter must be within [0, 1], got {self.jitter}"
            raise ValueError(msg)

    def delay(self, attempt: int) -> float:
        base = min(self.maximum, self.initial * 2.0 ** max(0, attempt - 1))
        # Not cryptographic: only spreads reconnects out.
        return base * (1 - self.jitter * random.random())  # noqa: S311


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenerStats:
    """Counters since the listener was created.

    Attributes:
        connects: successful connects, the first one included.
        reconnects: successful connects after a loss (`connects - 1` at most).
        connection_losses: times an established or attempted connection failed.
        notifications: notifications received on any channel.
    """

    connects: int
    reconnects: int
    connection_losses: int
    notifications: int


class Listener:
    """LISTEN on `channels` over one dedicated connection that reconnects by itself.

    `start()` returns once the first LISTEN is in place (and raises QueueError
    when the first connect fails: a wrong DSN should stop an app from starting);
    after that, losses are retried forever with `backoff`. `lock` serialises
    every query on `connection`, because asyncpg allows one at a time.
    """

    def __init__(
        self,
        dsn: str,
        *,
        channels: Sequence[str],
        notify: Notify,
        on_connect: OnConnect | None = None,
        backoff: Backoff | None = None,
        health_interval: float = 10.0,
        health_timeout: float = 5.0,
        connect_timeout: float = 10.0,
        query_timeout: float = 30.0,
        application_name: str = "legacy_compat.pgqueue",
    ) -> None:
        self._dsn = dsn
        self._channels = tuple(channels)
        self._notify = notify
        self._on_connect = on_connect
        self._backoff = backoff or Backoff()
        self._health_interval = health_interval
        self._health_timeout = health_timeout
        self._connect_timeout = connect_timeout
        self._query_timeout = query_timeout
        self._application_name = application_name
        self.lock = asyncio.Lock()
        self._conn: Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._connects = 0
        self._losses = 0
        self._notifications = 0

    @property
    def connection(self) -> Connection | None:
        """The live listening connection, None while reconnecting."""
        return self._conn

    @property
    def backend_pid(self) -> int | None:
        """The server process id of the listening connection (for pg_terminate_backend)."""
        return None if self._conn is None else self._conn.get_server_pid()

    def stats(self) -> ListenerStats:
        return ListenerStats(
            connects=self._connects,
            reconnects=max(0, self._connects - 1),
            connection_losses=self._losses,
            notifications=self._notifications,
        )

    async def start(self) -> None:
        if self._task is not None:
            msg = "the listener is already started"
            raise QueueError(msg)
        try:
            conn = await self._open()
        except _CONNECTION_ERRORS as exc:
            msg = f"cannot LISTEN on {', '.join(self._channels)}: {exc!r}"
            raise QueueError(msg) from exc
        self._task = asyncio.create_task(self._run(conn), name="legacy_compat.listener")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        # A task cancelled before it first ran never reached its `finally`.
        conn, self._conn = self._conn, None
        if conn is not None:
            await _close(conn)

    async def _open(self) -> Connection:
        conn = await asyncpg.connect(
            self._dsn,
            timeout=self._connect_timeout,
            # Bounds every query, so that a consumer stuck on a dead network
            # path releases `lock` and the health check can notice.
            command_timeout=self._query_timeout,
            server_settings={"application_name": self._application_name},
        )
        try:
            for channel in self._channels:
                await conn.add_listener(channel, self._on_notification)
            reconnect = self._connects > 0
            self._connects += 1
            self._conn = conn
            logger.info(
                "legacy_compat.listener.connected",
                extra={
                    "channels": self._channels,
                    "reconnect": reconnect,
                    "pid": conn.get_server_pid(),
                },
            )
            if self._on_connect is not None:
                await self._on_connect(conn, reconnect=reconnect)
        except BaseException:
            self._conn = None
            conn.terminate()
            raise
        return conn

    async def _run(self, conn: Connection) -> None:
        current: Connection | None = conn
        attempt = 0
        while True:
            if current is not None:
                attempt = 0
                await self._serve(current)
            attempt += 1
            await asyncio.sleep(self._backoff.delay(attempt))
            current = await self._reopen(attempt)

    async def _reopen(self, attempt: int) -> Connection | None:
        try:
            return await self._open()
        except _CONNECTION_ERRORS as exc:
            self._losses += 1
            logger.warning(
                "legacy_compat.listener.connect_failed",
                extra={"attempt": attempt, "error": repr(exc)},
            )
            return None

    async def _serve(self, conn: Connection) -> None:
        """Watch `conn` until it is lost; returns after logging and counting the loss."""
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _conn: lost.set())
        if conn.is_closed():
            lost.set()
        try:
            await self._watch(conn, lost)
        except (_ConnectionLost, *_CONNECTION_ERRORS) as exc:
            self._losses += 1
            logger.warning(
                "legacy_compat.listener.connection_lost",
                extra={"channels": self._channels, "error": repr(exc)},
            )
        finally:
            self._conn = None
            async with self.lock:  # not under a consumer's query
                await _close(conn)

    async def _watch(self, conn: Connection, lost: asyncio.Event) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._health_interval):
                    await lost.wait()
                raise _ConnectionLost
            # Quiet for a while: make sure the path to the server still works.
            async with self.lock:
                await conn.fetchval("SELECT 1", timeout=self._health_timeout)

    def _on_notification(self, _conn: Any, _pid: int, channel: str, payload: object) -> None:
        self._notifications += 1
        try:
            self._notify(channel=channel, payload=str(payload))
        except Exception:
            # A bug in the consumer must not break asyncpg's protocol callback.
            logger.exception("legacy_compat.listener.notify_failed", extra={"channel": channel})


async def _close(conn: Connection) -> None:
    """Close politely, so the server has dropped our advisory locks when this returns."""
    if conn.is_closed():
        return
    try:
        await asyncio.wait_for(conn.close(), 2.0)
    except _CONNECTION_ERRORS:
        conn.terminate()  # dead or unresponsive: just drop the socket
    except asyncio.CancelledError:
        conn.terminate()
        raise
