"""PgQueue: club-api's event stream (LISTEN/NOTIFY), routed, debounced and durable.

Plain mode (`durable=None`, `_plain.py`) LISTENs on `channel` for the legacy
JSON payloads (`{"type": "new_registration", "user_id": 123}`) that club-api's
triggers send; best effort, like NOTIFY itself. Durable mode
(`durable="consumer-name"`, `_outbox.py`) reads the outbox table instead and
loses nothing. docs/events.md has the whole story.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any, Final, Protocol, Self

import asyncpg

from legacy_compat._events import (
    Counters,
    DebounceMode,
    Handler,
    QueueStats,
    ReconnectHook,
    Router,
    encode_notification,
)
from legacy_compat._listener import Backoff, Listener
from legacy_compat._outbox import OUTBOX_CHANNEL, OutboxConsumer
from legacy_compat._plain import PlainSource
from legacy_compat.errors import QueueError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping

    from aiohttp import web

    from legacy_compat._config import Settings
    from legacy_compat._listener import Connection

__all__ = ["PgQueue"]

logger = logging.getLogger(__name__)

# The QueueStats fields that come from the listener (ListenerStats' names).
_LISTENER_COUNTERS: Final = ("connects", "reconnects", "connection_losses", "notifications")


class _Source(Protocol):
    """Where events come from: plain notifications or the outbox table."""

    def on_notification(self, payload: str) -> None: ...
    async def on_connect(self, connection: Connection, *, reconnect: bool) -> None: ...
    async def run(self) -> None: ...
    def request_stop(self) -> None: ...
    async def close(self) -> None: ...


class PgQueue:
    """LISTEN/NOTIFY consumer with typed routing, debounce modes and a durable mode.

    `PgQueue(dsn_or_settings, channel="events")` takes a DSN or a legacy_compat
    Settings (its `databases[database].dsn`). Register handlers with `on(type,
    handler)` / `on_any(handler)`; each is `async def handler(events)` and gets
    a batch (exactly one event in LEGACY mode). Start and stop it with `async
    with queue:` or `app.cleanup_ctx.append(queue.cleanup_ctx)`; once started
    it is listening. With `durable="name"` it consumes the `club_events` outbox
    as consumer `name` (at least once, in id order, nothing lost across
    disconnects and restarts); `channel` then does not apply, the outbox wakes
    its consumers on channel `club_events`.
    """

    def __init__(
        self,
        dsn_or_settings: str | Settings,
        *,
        channel: str = "events",
        mode: DebounceMode = DebounceMode.COALESCE,
        window: float = 2.0,
        durable: str | None = None,
        on_reconnect: ReconnectHook | None = None,
        database: str = "club",
        max_pending: int = 100_000,
        batch_size: int = 500,
        poll_interval: float = 1.0,
        backoff: Backoff | None = None,
        health_interval: float = 10.0,
        health_timeout: float = 5.0,
        stop_timeout: float = 5.0,
    ) -> None:
        if window < 0 or max_pending < 1 or batch_size < 1 or poll_interval <= 0:
            msg = "PgQueue needs window >= 0, max_pending >= 1, batch_size >= 1, poll_interval > 0"
            raise QueueError(msg)
        if durable is not None and not durable:
            msg = "a durable consumer needs a non-empty name"
            raise QueueError(msg)
        self._dsn = _dsn_of(dsn_or_settings, database)
        self._channel = channel
        self._mode = mode
        self._window = window
        self._durable = durable
        self._on_reconnect = on_reconnect
        self._max_pending = max_pending
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._backoff = backoff
        self._health_interval = health_interval
        self._health_timeout = health_timeout
        self._stop_timeout = stop_timeout
        self._counters = Counters()
        self._router = Router(self._counters)
        self._listener: Listener | None = None
        # Each start makes a new Listener; the counts of those stopped are kept
        # here (and those stopping still counted live) so stats() stays monotonic.
        self._stopped_listeners = dict.fromkeys(_LISTENER_COUNTERS, 0)
        self._stopping: list[Listener] = []
        self._source: _Source | None = None
        self._task: asyncio.Task[None] | None = None
        self._pool: asyncpg.Pool[asyncpg.Record] | None = None
        self._pool_lock = asyncio.Lock()

    def on(self, kind: str, handler: Handler) -> None:
        """Route events of type `kind` to `handler`."""
        self._router.on(kind, handler)

    def on_any(self, handler: Handler) -> None:
        """Route every event to `handler` (the catch-all)."""
        self._router.on_any(handler)

    @property
    def listener_pid(self) -> int | None:
        """The server pid of the listening connection, None while (re)connecting."""
        return None if self._listener is None else self._listener.backend_pid

    def stats(self) -> QueueStats:
        """Counters for the life of the queue: they never go back, across stop and start."""
        listeners = [*self._stopping, *([] if self._listener is None else [self._listener])]
        values = dict(self._counters.values)
        for name, total in self._stopped_listeners.items():
            values[name] = total + sum(getattr(lst.stats(), name) for lst in listeners)
        return QueueStats(**values)

    async def start(self) -> None:
        """Connect and LISTEN; raises QueueError when the first connect fails."""
        if self._listener is not None:
            msg = "the queue is already started"
            raise QueueError(msg)
        self._listener = self._make_listener()
        self._source = self._make_source(self._listener)
        self._task = asyncio.create_task(self._source.run(), name="legacy_compat.pgqueue")
        try:
            await self._listener.start()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop delivering and listening, deliver what coalesce mode holds, close connections.

        A handler call in progress is cancelled; in durable mode its events
        are delivered again at the next start (their offset was not saved).
        """
        listener, self._listener = self._listener, None
        if listener is not None:
            self._stopping.append(listener)
        task, self._task = self._task, None
        source, self._source = self._source, None
        # The consumer first: it queries the listener's connection.
        if task is not None and source is not None:
            await self._stop_source(source, task)
        if listener is not None:
            await self._stop_listener(listener)
        if source is not None:
            await source.close()
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def _stop_listener(self, listener: Listener) -> None:
        try:
            await listener.stop()
        finally:
            self._stopping.remove(listener)
            final = listener.stats()
            for name in self._stopped_listeners:
                self._stopped_listeners[name] += getattr(final, name)

    async def _stop_source(self, source: _Source, task: asyncio.Task[None]) -> None:
        # Durable mode may finish the chunk in hand (and save its offset), so
        # a routine restart does not hand the same events over again.
        source.request_stop()
        grace = self._stop_timeout if self._durable is not None else 0
        done, _ = await asyncio.wait({task}, timeout=grace)
        if not done:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    async def cleanup_ctx(self, _app: web.Application) -> AsyncIterator[None]:
        """For `app.cleanup_ctx.append(queue.cleanup_ctx)`."""
        async with self:
            yield

    async def notify(self, kind: str, payload: Mapping[str, Any] | None = None) -> None:
        """Send `{"type": kind, **payload}` on `channel` (plain NOTIFY, best effort).

        Raises NotifyPayloadTooLarge at or over PostgreSQL's 8000-byte limit,
        before anything is sent. Durable events go through `emit` instead.
        """
        text = encode_notification(kind, payload)
        pool = await self._notify_pool()
        await pool.execute("SELECT pg_notify($1, $2)", self._channel, text)

    async def _notify_pool(self) -> asyncpg.Pool[asyncpg.Record]:
        async with self._pool_lock:
            if self._pool is None:
                self._pool = await asyncpg.create_pool(self._dsn, min_size=0, max_size=2)
            return self._pool

    def _make_listener(self) -> Listener:
        durable = self._durable is not None
        return Listener(
            self._dsn,
            channels=[OUTBOX_CHANNEL if durable else self._channel],
            notify=self._on_notify,
            on_connect=self._on_connect,
            backoff=self._backoff,
            health_interval=self._health_interval,
            health_timeout=self._health_timeout,
            application_name=f"pgqueue:{self._durable}" if durable else f"pgqueue:{self._channel}",
        )

    def _make_source(self, listener: Listener) -> _Source:
        if self._durable is None:
            return PlainSource(
                router=self._router,
                counters=self._counters,
                mode=self._mode,
                window=self._window,
                max_pending=self._max_pending,
            )
        return OutboxConsumer(
            name=self._durable,
            listener=listener,
            router=self._router,
            counters=self._counters,
            mode=self._mode,
            window=self._window,
            batch_size=self._batch_size,
            poll_interval=self._poll_interval,
        )

    def _on_notify(self, *, channel: str, payload: str) -> None:
        del channel  # one channel per queue
        if self._source is not None:
            self._source.on_notification(payload)

    async def _on_connect(self, connection: Connection, *, reconnect: bool) -> None:
        if self._source is not None:
            await self._source.on_connect(connection, reconnect=reconnect)
        if reconnect and self._on_reconnect is not None:
            try:
                await self._on_reconnect()
            except Exception:
                # The caller's resync failing must not take the listener down.
                logger.exception("legacy_compat.pgqueue.on_reconnect_failed")


def _dsn_of(dsn_or_settings: str | Settings, database: str) -> str:
    if isinstance(dsn_or_settings, str):
        return dsn_or_settings
    try:
        return dsn_or_settings.databases[database].dsn
    except KeyError:
        msg = f"pg.toml has no [{database}] database for PgQueue"
        raise QueueError(msg) from None
