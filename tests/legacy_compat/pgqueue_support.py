"""Helpers for the PgQueue tests: handlers that record, and waiting on conditions."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import asyncpg

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from legacy_compat import Event, PgQueue

# Generous: the machine is shared and slow; nothing here measures time.
WAIT = 60.0


class Recorder:
    """A handler that keeps every batch it was called with."""

    def __init__(self) -> None:
        self.batches: list[list[Event]] = []
        self.changed = asyncio.Event()

    async def __call__(self, events: Sequence[Event]) -> None:
        self.batches.append(list(events))
        self.changed.set()

    @property
    def events(self) -> list[Event]:
        return [event for batch in self.batches for event in batch]


class IdempotentRecorder(Recorder):
    """Records raw deliveries, and handles each outbox id once (first delivery wins)."""

    def __init__(self) -> None:
        super().__init__()
        self.handled: list[int] = []
        self._seen: set[int] = set()

    async def __call__(self, events: Sequence[Event]) -> None:
        for event in events:
            assert event.id is not None
            if event.id not in self._seen:
                self._seen.add(event.id)
                self.handled.append(event.id)
        await super().__call__(events)


async def wait_until(condition: Callable[[], bool], *, timeout: float = WAIT) -> None:
    """Poll `condition` until it holds; fails the test after `timeout` seconds."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def terminate_listener(queue: PgQueue, dsn: str) -> int:
    """pg_terminate_backend on the queue's listening connection; returns once it is gone."""
    pid = queue.listener_pid
    assert pid is not None
    conn = await asyncpg.connect(dsn)
    try:
        # The timeout form (PostgreSQL 14+) waits until the backend has exited.
        assert await conn.fetchval("SELECT pg_terminate_backend($1, 10000)", pid)
    finally:
        await conn.close()
    return pid
