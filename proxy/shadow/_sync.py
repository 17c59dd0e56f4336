"""A book's link to the store: the deltas not yet written, the flush task, outages.

`pending` takes every count the book makes; every `flush_interval` (and
before a report) it is swapped out and written in one transaction. A write
that fails puts its deltas back in front of what came since, so counts are
never lost, only late. `shared` is the noise of every replica as read back
by the last write. One warning is logged per outage, and an info when the
store is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Final

from proxy.shadow._tally import Tally
from proxy.shadow.store import PgStore, ShadowStoreError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from proxy.routing.model import Shadow, ShadowStore
    from proxy.shadow._rows import StoredRoute

__all__ = ["MAX_RETRY_DELAY", "STORE_WAIT", "StoreLink"]

logger = logging.getLogger(__name__)

# The longest a report, a reset and close wait for the store.
STORE_WAIT: Final = 2.0
# Writes while the store is down back off up to this.
MAX_RETRY_DELAY: Final = 10.0
# A flush_interval of 0 must not spin the loop.
MIN_INTERVAL: Final = 0.01


class StoreLink:
    """Pending deltas and their writer, for one `ShadowBook`."""

    def __init__(
        self,
        config: ShadowStore,
        *,
        now: Callable[[], float],
        specs: Mapping[str, Shadow],
        local: Tally,
    ) -> None:
        self._config = config
        self._store = PgStore(config)
        self._now = now
        self._specs = specs  # the book's, kept up to date by it
        self._local = local  # the book's own totals, pruned with the store's retention
        self.pending = Tally()  # deltas the store has not got yet
        self.inflight: Tally | None = None  # deltas being written
        self.shared = Tally()  # the noise stats of every replica, as last read back
        self._resets: set[str] = set()  # resets the store has not got yet
        self._lock = asyncio.Lock()  # one write (or reset) at a time
        self._task: asyncio.Task[None] | None = None
        self._flushes: set[asyncio.Task[bool]] = set()
        self._outage = False

    async def start(self) -> None:
        """Connect and migrate (a failure is logged, not raised), then write periodically."""
        if self._task is not None:
            return
        try:
            await self._store.connect()
        except ShadowStoreError as exc:
            self._down(exc)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        """Stop writing, try one last write (at most `STORE_WAIT`), close the pool."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STORE_WAIT):
                await asyncio.shield(self._flush_task())
        for task in list(self._flushes):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._store.close()

    def noise_sources(self) -> list[Tally]:
        """Where the noise stats are: read back, being written, pending."""
        return [self.shared, self.pending, *([self.inflight] if self.inflight else [])]

    def waiting_examples(self) -> int:
        inflight = 0 if self.inflight is None else self.inflight.examples()
        return self.pending.examples() + inflight

    async def read(
        self, route_id: str | None, *, examples: bool
    ) -> tuple[Tally, Mapping[str, StoredRoute]] | None:
        """The store's totals after writing ours; None when the store is out of reach."""
        try:
            async with asyncio.timeout(STORE_WAIT):
                if await asyncio.shield(self._flush_task()):
                    return await self._store.read(route_id, examples=examples)
        except (ShadowStoreError, TimeoutError) as exc:
            self._down(exc)
        return None

    async def reset(self, route_id: str) -> bool | None:
        """Delete the route's rows and deltas: whether it had rows (None: done at the next write)."""
        async with self._lock:
            self.pending.routes.pop(route_id, None)
            self.shared.routes.pop(route_id, None)
            try:
                async with asyncio.timeout(STORE_WAIT):
                    existed = await self._store.reset(route_id)
            except (ShadowStoreError, TimeoutError) as exc:
                self._resets.add(route_id)
                self._down(exc)
                return None
        self._up()
        return existed

    async def _run(self) -> None:
        """Write every `flush_interval`; back off while the store is down."""
        interval = max(self._config.flush_interval, MIN_INTERVAL)
        delay = interval
        while True:
            await asyncio.sleep(delay)
            try:
                # Shielded: close() stops the loop, never a transaction half-way.
                written = await asyncio.shield(self._flush_task())
            except Exception:
                # A bug must not end the loop: the next write may well succeed.
                logger.exception("proxy.shadow.flush_failed")
                written = False
            delay = interval if written else min(delay * 2, max(MAX_RETRY_DELAY, interval))

    def _flush_task(self) -> asyncio.Task[bool]:
        """A write of everything pending, as a task a caller may stop waiting for."""
        task = asyncio.get_running_loop().create_task(self._flush())
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)
        return task

    async def _flush(self) -> bool:
        """Write the pending deltas (after any write under way); False: the store is down."""
        async with self._lock:
            batch, self.pending = self.pending, Tally()
            resets, self._resets = self._resets, set()
            self.inflight = batch
            try:
                self.shared = await self._store.write(
                    batch, resets=resets, routes=self._specs, now=self._now()
                )
            except BaseException as exc:
                # Not written: back in front of what came since, to be written next time.
                batch.merge(self.pending)
                self.pending, self._resets = batch, resets | self._resets
                if not isinstance(exc, ShadowStoreError):
                    raise
                self._down(exc)
                return False
            finally:
                self.inflight = None
        cutoff = self._now() - self._config.retention
        for tally in self._local.routes.values():
            tally.prune(cutoff)
        self._up()
        return True

    def _down(self, exc: BaseException) -> None:
        if not self._outage:
            self._outage = True
            sqlstate = exc.sqlstate if isinstance(exc, ShadowStoreError) else None
            error = str(exc) or type(exc).__name__
            logger.warning(
                "proxy.shadow.store_unavailable", extra={"error": error, "sqlstate": sqlstate}
            )

    def _up(self) -> None:
        if self._outage:
            self._outage = False
            logger.info("proxy.shadow.store_back")
