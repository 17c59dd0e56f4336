"""PgQueue's durable mode: consume the `club_events` outbox (sql/outbox.sql).

The table is the truth and NOTIFY only a wake-up. A consumer name keeps its
last processed id in `club_event_consumers`; on start, after every reconnect
and every `poll_interval` it reads on from there, so nothing committed is
lost across disconnects or restarts. Delivery is at least once: the offset is
saved after the handlers return, so a crash or a lost connection in between
hands the same events (same ids) over again.

Instances sharing a consumer name: a session advisory lock per name, taken on
the listener's own connection, elects one leader; the others stand by and try
again every `poll_interval`. PostgreSQL drops the lock with the connection,
and offsets are saved only on the connection holding the lock, so a leader
that lost its connection cannot move the offset under its successor. (Row
locks would hold a transaction open while handlers run; SKIP LOCKED would
spread one name's events over instances and lose the id order.)

Id order despite concurrent writers: ids are taken in time order but
committed in any order, so a missing id below a visible one may belong to a
transaction still in flight. The consumer stops at such a gap and skips it
only once every transaction that could hold it has ended (the `settled`
flag of the fetch query; the reasoning is in docs/events.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

import asyncpg
import orjson

from legacy_compat._db import translate_errors
from legacy_compat._events import BadPayload, Counters, DebounceMode, Event, Router
from legacy_compat.errors import QueueError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from legacy_compat._listener import Connection, Listener

__all__ = ["OUTBOX_CHANNEL", "OutboxConsumer", "emit"]

logger = logging.getLogger(__name__)

# The channel `club_emit` NOTIFYs ids on (sql/outbox.sql).
OUTBOX_CHANNEL: Final = "club_events"

# What a lost connection raises mid-query; the listener reconnects and wakes us.
# InternalClientError: the connection was being closed under the query.
_CONNECTION_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)

# First wait before looking at a gap again; doubles up to poll_interval.
_GAP_RETRY: Final = 0.005


@functools.cache
def queries() -> Mapping[str, str]:
    """The `-- name:` blocks of sql/queue_queries.sql (read once, on first use)."""
    text = (Path(__file__).parent / "sql" / "queue_queries.sql").read_text(encoding="utf-8")
    blocks = re.split(r"^-- name: (\w+)\n", text, flags=re.MULTILINE)[1:]
    return dict(zip(blocks[::2], (sql.strip() for sql in blocks[1::2]), strict=True))


class _Executor(Protocol):
    """Anything with asyncpg's `fetchval`: a connection, a pool, a PgBank database or tx."""

    async def fetchval(self, query: str, /, *args: Any) -> Any: ...


async def emit(target: _Executor, kind: str, payload: Mapping[str, Any] | None = None) -> int:
    """Write a durable event through `club_emit` and return its id.

    Call it inside the transaction that makes the change, so the event
    exists exactly when the change does. The payload is sent as JSON text and
    cast in SQL, which works whatever jsonb codec the connection carries.
    """
    if not kind:
        msg = "an event needs a non-empty type"
        raise QueueError(msg)
    body = orjson.dumps(dict(payload or {})).decode()
    with translate_errors("club_emit"):
        new_id = await target.fetchval(queries()["emit"], kind, body)
    return int(new_id)


class OutboxConsumer:
    """One consumer name reading the outbox on the listener's connection."""

    def __init__(
        self,
        *,
        name: str,
        listener: Listener,
        router: Router,
        counters: Counters,
        mode: DebounceMode,
        window: float,
        batch_size: int,
        poll_interval: float,
    ) -> None:
        self._name = name
        self._listener = listener
        self._router = router
        self._counters = counters
        self._mode = mode
        self._window = window
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._wake = asyncio.Event()
        self._stopping = False
        self._leader: Connection | None = None  # the connection holding our lock
        self._next_attempt = 0.0
        self._last_id = 0
        self._max_delivered = 0
        # (snapshot, xid) recorded when the gap after _last_id was first seen.
        self._gap: tuple[str, str] | None = None
        self._gap_delay = _GAP_RETRY

    def on_notification(self, payload: str) -> None:
        try:
            new_id = int(payload)
        except ValueError:
            self._counters.add("bad_payloads")
            logger.warning(
                "legacy_compat.pgqueue.bad_payload",
                extra={"reason": "outbox wake-up is not an id", "payload": payload[:200]},
            )
            return
        if new_id > self._last_id:
            self._wake.set()

    async def on_connect(self, connection: Connection, *, reconnect: bool) -> None:
        """Register and try to lead now, then catch up from the saved offset.

        Done inside `start()` for the first connection, so a queue that was
        started has registered its consumer name, even if stopped at once.
        """
        del reconnect
        self._leader, self._gap, self._next_attempt = None, None, 0.0
        await self._lead(connection)
        self._wake.set()

    def request_stop(self) -> None:
        """Finish the chunk in hand, save its offset, then end `run()`."""
        self._stopping = True
        self._wake.set()

    async def close(self) -> None:
        """Nothing buffered: undelivered events stay in the table."""

    async def run(self) -> None:
        while not self._stopping:
            timeout = self._gap_delay if self._gap is not None else self._poll_interval
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self._drain()
            except _CONNECTION_ERRORS as exc:
                # The listener reconnects and wakes us; lead and read the offset again.
                self._leader, self._gap = None, None
                logger.info(
                    "legacy_compat.pgqueue.consumer_interrupted",
                    extra={"consumer": self._name, "error": repr(exc)},
                )
            except Exception:
                # A bug must not end delivery for good: log it, retry after a poll interval.
                self._leader, self._gap = None, None
                logger.exception(
                    "legacy_compat.pgqueue.consumer_failed", extra={"consumer": self._name}
                )

    async def _drain(self) -> None:
        conn = self._listener.connection
        if conn is None or not await self._lead(conn):
            return
        while events := await self._fetch(conn):
            self._counters.add("received", len(events))
            self._counters.add(
                "redelivered", sum((e.id or 0) <= self._max_delivered for e in events)
            )
            for chunk in self._chunks(events):
                await self._router.dispatch(chunk)
                await self._save(conn, chunk[-1])
                if self._stopping:  # the chunk in hand is done and saved
                    return
                if self._mode is DebounceMode.LEGACY:
                    await asyncio.sleep(self._window)

    def _chunks(self, events: list[Event]) -> list[list[Event]]:
        if self._mode is DebounceMode.LEGACY:
            return [[event] for event in events]
        return [events]

    async def _lead(self, conn: Connection) -> bool:
        if self._leader is conn:
            return True
        now = asyncio.get_running_loop().time()
        if now < self._next_attempt:
            return False
        self._next_attempt = now + self._poll_interval
        async with self._listener.lock:
            await conn.execute(queries()["register_consumer"], self._name)
            if not await conn.fetchval(queries()["lock_consumer"], self._name):
                logger.debug(
                    "legacy_compat.pgqueue.consumer_standby", extra={"consumer": self._name}
                )
                return False
            # Read after the lock is ours: the previous leader's last save is in.
            self._last_id = int(await conn.fetchval(queries()["read_offset"], self._name))
        self._leader, self._gap = conn, None
        logger.info(
            "legacy_compat.pgqueue.consumer_leading",
            extra={"consumer": self._name, "last_id": self._last_id},
        )
        return True

    async def _save(self, conn: Connection, last: Event) -> None:
        if last.id is None:  # pragma: no cover  (outbox events always carry an id)
            return
        self._max_delivered = max(self._max_delivered, last.id)
        async with self._listener.lock:
            await conn.execute(queries()["save_offset"], self._name, last.id)
        self._last_id = last.id

    async def _fetch(self, conn: Connection) -> list[Event]:
        """The next events in id order, stopping at a gap that may still fill."""
        snapshot, xid = self._gap or (None, None)
        async with self._listener.lock:
            rows = await conn.fetch(
                queries()["fetch_events"], self._last_id, self._batch_size, snapshot, xid
            )
        if not rows:
            self._gap = None
            return []
        expected = self._last_id + 1
        if rows[0]["id"] != expected:
            if self._gap is None or not rows[0]["settled"]:
                await self._wait_for_gap(conn, rows[0]["snapshot"])
                return []
            logger.debug(
                "legacy_compat.pgqueue.gap_skipped",
                extra={"consumer": self._name, "ids": (expected, rows[0]["id"] - 1)},
            )
            expected = rows[0]["id"]
        self._gap, self._gap_delay = None, _GAP_RETRY
        events = []
        for row in rows:
            if row["id"] != expected:
                break
            events.append(_event(row))
            expected += 1
        return events

    async def _wait_for_gap(self, conn: Connection, snapshot: str) -> None:
        if self._gap is None:
            # Any transaction that could hold a missing id got its xid before
            # `snapshot`; every xid from now on is newer than all of those.
            async with self._listener.lock:
                xid = await conn.fetchval(queries()["xid_now"])
            self._gap, self._gap_delay = (snapshot, str(xid)), _GAP_RETRY
        else:
            self._gap_delay = min(self._poll_interval, self._gap_delay * 2)


def _event(row: asyncpg.Record) -> Event:
    payload = orjson.loads(row["payload"])
    if not isinstance(payload, dict):  # pragma: no cover  (the table's CHECK forbids it)
        msg = "outbox payload is not a JSON object"
        raise BadPayload(msg)
    return Event(type=row["type"], payload=payload, id=row["id"], created_at=row["created_at"])
