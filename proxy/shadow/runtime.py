"""Live shadow in one proxy process: the draw's consequences, the queue, the copies.

The request paths call `ShadowRuntime.begin` for a request of a shadowed
route (and only then: other routes pay nothing). It counts why a request is
not copied, or returns a `PrimaryTap` the path feeds while it relays. When the
primary's head is known the copy is queued (a bounded queue: full means the
copy is dropped and counted); a fixed set of worker tasks takes the copies
(`proxy.shadow.copies.CopyWorker`: the candidate, the primary's second
answer, the comparison, the outcome). A capture (`proxy.shadow.capture`)
shares the tap. Nothing here is awaited by a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from typing import TYPE_CHECKING

from proxy.routing.model import NEW, SAFE_METHODS
from proxy.shadow.admission import Admission
from proxy.shadow.candidate import CandidateClients
from proxy.shadow.copies import Copy, CopyWorker
from proxy.shadow.model import SkipReason
from proxy.shadow.tap import Buffers, PrimaryTap

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from proxy.routing.model import Capture, Route, Shadow
    from proxy.routing.table import RouteTable
    from proxy.shadow.candidate import Endpoint
    from proxy.shadow.capture import CaptureWriter
    from proxy.shadow.metrics import ShadowMetrics
    from proxy.shadow.results import ShadowBook

__all__ = ["ShadowRuntime"]

logger = logging.getLogger(__name__)


class ShadowRuntime:
    """The shadow queue and workers of one process (`start`, `close`)."""

    def __init__(
        self,
        book: ShadowBook,
        *,
        metrics: ShadowMetrics | None = None,
        queue_size: int = 1024,
        workers: int = 16,
        max_buffered: int = 64 * 1024 * 1024,
        rate: float = 200.0,
    ) -> None:
        self.book = book
        self.metrics = metrics
        self.queue: asyncio.Queue[Copy] = asyncio.Queue(queue_size)
        # The primary bodies held for queued and running copies, all routes together.
        self.buffers = Buffers(max_buffered)
        self._workers = workers
        self._tasks: list[asyncio.Task[None]] = []
        self._clients = CandidateClients(limit=workers)
        self.admission = Admission(rate=rate)
        # The in-process `new` app's own socket (proxy.serving.shadowsite), when there is one.
        self.inprocess_socket: str | None = None
        # Where captured exchanges go; None: captures are off in this process.
        self.capture: CaptureWriter | None = None

    async def start(self) -> None:
        await self.book.start()
        self._tasks = [
            asyncio.create_task(self._work(), name=f"shadow-worker-{n}")
            for n in range(self._workers)
        ]

    async def close(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._clients.close()
        await self.book.close()

    # --- on the request path ----------------------------------------------------

    def begin(
        self,
        table: RouteTable,
        route: Route,
        primary: str,
        sampled: Shadow | None,
        captured: Capture | None = None,
        *,
        method: str,
        target: str,
        headers: Callable[[], Iterable[tuple[str, str]]],
        upgrade: bool = False,
    ) -> PrimaryTap | None:
        """A tap for this request's primary answer, or None (a skipped copy is counted).

        `route.tapped` is set; `sampled` and `captured` are the decision's
        draws; `headers` builds the headers an upstream would get (called
        off the request path, for a copy or a capture).
        """
        copy = self._copy(table, route, primary, sampled, method=method, upgrade=upgrade)
        capture = captured if self.capture is not None and not upgrade else None
        if copy is None and capture is None:
            return None
        shadow = route.shadow
        route_id = route.id
        loop = asyncio.get_running_loop()

        def queue(tap: PrimaryTap) -> bool:
            if copy is None or shadow is None:
                return True  # a capture only: keep the body
            candidate, primary_side = copy
            try:
                self.queue.put_nowait(
                    Copy(
                        route_id=route_id,
                        shadow=shadow,
                        method=method,
                        target=target,
                        headers=headers,
                        candidate=candidate,
                        primary_side=primary_side,
                        tap=tap,
                    )
                )
            except asyncio.QueueFull:
                self.book.skipped(route_id, SkipReason.QUEUE_FULL)
                return capture is not None
            return True

        limits = (
            shadow.max_body if copy is not None and shadow is not None else 0,
            capture.max_body if capture is not None else 0,
        )
        tap = PrimaryTap(
            max_body=max(limits),
            buffers=self.buffers,
            answer=loop.create_future(),
            on_start=queue,
            on_lost=functools.partial(self.book.skipped, route_id, SkipReason.PRIMARY_ERROR)
            if copy is not None
            else _nothing,
        )
        if capture is not None and self.capture is not None:
            self.capture.follow(
                capture, route_id, method=method, target=target, headers=headers, tap=tap
            )
        return tap

    def _copy(
        self,
        table: RouteTable,
        route: Route,
        primary: str,
        sampled: Shadow | None,
        *,
        method: str,
        upgrade: bool,
    ) -> tuple[Endpoint, Endpoint] | None:
        """Where this request's copy goes (candidate, primary side), or None (counted)."""
        shadow = route.shadow
        if shadow is None:
            return None
        reason = (
            _not_copied(shadow, primary, sampled, method, upgrade=upgrade)
            or (SkipReason.QUEUE_FULL if self.queue.full() else None)
            or self.admission.refuse(route.id)
        )
        if reason is not None:
            self.book.skipped(route.id, reason)
            return None
        candidate = self._endpoint(table, shadow.to)
        primary_side = self._endpoint(table, primary)
        if candidate is None or primary_side is None:
            self.book.skipped(route.id, SkipReason.CANDIDATE_ERROR)
            return None
        return candidate, primary_side

    def _endpoint(self, table: RouteTable, target: str) -> Endpoint | None:
        if target != NEW:
            upstream = table.upstreams.get(target)
            return None if upstream is None else (str(upstream.url).rstrip("/"), None)
        new = table.new
        if new is not None and new.url is not None:
            return (str(new.url).rstrip("/"), None)
        if self.inprocess_socket is not None:
            return ("http://new.shadow", self.inprocess_socket)
        return None

    # --- off the request path -----------------------------------------------------

    async def _work(self) -> None:
        worker = CopyWorker(
            book=self.book,
            admission=self.admission,
            clients=self._clients,
            metrics=lambda: self.metrics,
        )
        while True:
            copy = await self.queue.get()
            try:
                await worker.run(copy)
            except Exception:  # a bug of ours must not stop the worker
                logger.exception("proxy.shadow_error", extra={"route": copy.route_id})
                self.book.skipped(copy.route_id, SkipReason.CANDIDATE_ERROR)
            finally:
                copy.tap.release()
                # Not kept until the next copy: it holds both answers' bodies.
                del copy


def _nothing() -> None:
    """A capture-only tap has nothing to count when the primary fails."""


def _not_copied(
    shadow: Shadow, primary: str, sampled: Shadow | None, method: str, *, upgrade: bool
) -> SkipReason | None:
    if upgrade:
        return SkipReason.UPGRADE
    if method not in SAFE_METHODS:
        return SkipReason.UNSAFE_METHOD
    if primary == shadow.to:
        return SkipReason.SAME_TARGET
    if sampled is None:
        return SkipReason.SAMPLED_OUT
    return None
