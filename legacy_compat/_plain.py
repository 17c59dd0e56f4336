"""PgQueue's plain mode: legacy NOTIFY payloads, paced by a bounded buffer.

Best effort, like NOTIFY itself: whatever is sent while the listener is
reconnecting is lost, so `on_reconnect` is the caller's cue to re-read state.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import TYPE_CHECKING

import orjson

from legacy_compat._events import (
    BadPayload,
    Counters,
    DebounceMode,
    Event,
    Router,
    parse_notification,
)

if TYPE_CHECKING:
    from legacy_compat._listener import Connection

__all__ = ["PlainSource"]

logger = logging.getLogger(__name__)


class PlainSource:
    """Plain mode: parse each notification and pace it through a bounded buffer."""

    def __init__(
        self,
        *,
        router: Router,
        counters: Counters,
        mode: DebounceMode,
        window: float,
        max_pending: int,
    ) -> None:
        self._router = router
        self._counters = counters
        self._mode = mode
        self._window = window
        self._max_pending = max_pending
        # Coalesce: pending events keyed by (type, canonical payload), so that
        # identical payloads merge. Legacy: a FIFO of single events.
        self._pending: dict[tuple[str, bytes], Event] = {}
        self._fifo: collections.deque[Event] = collections.deque()
        self._overflowing = False
        self._ready = asyncio.Event()

    def on_notification(self, payload: str) -> None:
        try:
            event = parse_notification(payload)
        except BadPayload as exc:
            self._counters.add("bad_payloads")
            logger.warning(
                "legacy_compat.pgqueue.bad_payload",
                extra={"reason": str(exc), "payload": payload[:200]},
            )
            return
        self._counters.add("received")
        self._push(event)

    def _push(self, event: Event) -> None:
        if self._mode is DebounceMode.LEGACY:
            full = len(self._fifo) >= self._max_pending
            if not full:
                self._fifo.append(event)
        else:
            key = (event.type, orjson.dumps(event.payload, option=orjson.OPT_SORT_KEYS))
            if key in self._pending:
                self._counters.add("merged")
                return
            full = len(self._pending) >= self._max_pending
            if not full:
                self._pending[key] = event
        if full:
            self._counters.add("dropped")
            if not self._overflowing:  # one line per overflow episode, not per event
                self._overflowing = True
                logger.warning(
                    "legacy_compat.pgqueue.overflow",
                    extra={"max_pending": self._max_pending, "type": event.type},
                )
            return
        self._overflowing = False
        self._ready.set()

    async def on_connect(self, connection: Connection, *, reconnect: bool) -> None:
        """Nothing to catch up on: plain NOTIFYs sent during a gap are gone."""

    async def run(self) -> None:
        while True:
            await self._ready.wait()
            if self._mode is DebounceMode.LEGACY:
                await self._router.dispatch([self._fifo.popleft()])
                if not self._fifo:
                    self._ready.clear()
                await asyncio.sleep(self._window)
            else:
                # The window starts at the first pending event, which bounds latency.
                await asyncio.sleep(self._window)
                await self._flush()

    async def _flush(self) -> None:
        batch, self._pending = list(self._pending.values()), {}
        self._ready.clear()
        if batch:
            await self._router.dispatch(batch)

    def request_stop(self) -> None:
        """Nothing to finish: `close()` delivers what is pending."""

    async def close(self) -> None:
        """Deliver what coalesce mode still holds; legacy mode's backlog is dropped and counted."""
        if self._fifo:
            self._counters.add("dropped", len(self._fifo))
            self._fifo.clear()
        await self._flush()
