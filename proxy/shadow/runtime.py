"""Live shadow in one proxy process: the draw's consequences, the queue, the copies.

The request paths call `ShadowRuntime.begin` for a request of a shadowed
route (and only then: other routes pay nothing). It counts why a request is
not copied, or returns a `PrimaryTap` the path feeds while it relays. When the
primary's head is known the copy is queued (a bounded queue: full means the
copy is dropped and counted); a fixed set of worker tasks sends it to the
candidate with the route's timeout and body cap, waits for the rest of the
primary, asks the primary side a second time for the route's `noise` share
(Diffy's secondary), compares (`proxy.shadow.compare`) and records the outcome
(`proxy.shadow.results.ShadowBook`). Nothing here is awaited by a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import aiohttp

from proxy.routing.model import NEW, SAFE_METHODS
from proxy.shadow.admission import Admission
from proxy.shadow.candidate import CandidateClients
from proxy.shadow.compare import BodyTooLarge, compare
from proxy.shadow.model import DEFAULT_IGNORED_HEADERS, Answer, CompareRules, Example, SkipReason
from proxy.shadow.redact import redact_answer, redact_differences, redact_headers
from proxy.shadow.tap import Buffers, PrimaryTap

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from proxy.routing.model import Capture, Route, Shadow
    from proxy.routing.table import RouteTable
    from proxy.shadow.candidate import Endpoint
    from proxy.shadow.capture import CaptureWriter
    from proxy.shadow.metrics import ShadowMetrics
    from proxy.shadow.model import Difference
    from proxy.shadow.results import ShadowBook

__all__ = ["SHADOW_HEADER", "ShadowRuntime"]

logger = logging.getLogger(__name__)

# Marks a copy, so a side can tell it from a real request.
SHADOW_HEADER: Final = "X-Club-Shadow"
# Bodies above this (both sides together) are compared in a thread, so a
# large JSON document does not hold the event loop for its whole diff.
_THREAD_COMPARE: Final = 256 * 1024
# How long a copy waits for the rest of a primary answer still being relayed.
_PRIMARY_WAIT: Final = 120.0
_SIDE_FAILURES: Final = (aiohttp.ClientError, OSError)


@dataclass(slots=True, kw_only=True)
class _Copy:
    """One queued copy: what to send where, and the primary it is compared with."""

    route_id: str
    shadow: Shadow
    method: str
    target: str
    # Built by the worker, not on the request path (`request_headers`).
    headers: Callable[[], Iterable[tuple[str, str]]]
    candidate: Endpoint
    primary_side: Endpoint
    tap: PrimaryTap
    _built: tuple[tuple[str, str], ...] | None = None

    def request_headers(self) -> tuple[tuple[str, str], ...]:
        """What an upstream would get for the request, marked as a copy."""
        if self._built is None:
            self._built = (*self.headers(), (SHADOW_HEADER, "1"))
        return self._built


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
        self.queue: asyncio.Queue[_Copy] = asyncio.Queue(queue_size)
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
                    _Copy(
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
        while True:
            copy = await self.queue.get()
            try:
                await self._run(copy)
            except Exception:  # a bug of ours must not stop the worker
                logger.exception("proxy.shadow_error", extra={"route": copy.route_id})
                self.book.skipped(copy.route_id, SkipReason.CANDIDATE_ERROR)
            finally:
                copy.tap.release()

    async def _run(self, copy: _Copy) -> None:
        shadow, route_id = copy.shadow, copy.route_id
        if self.admission.down(route_id):
            self.book.skipped(route_id, SkipReason.CANDIDATE_DOWN)
            return
        candidate = await self._ask(copy, copy.candidate)
        if isinstance(candidate, SkipReason):
            self.admission.failed(route_id)
            self.book.skipped(route_id, candidate)
            return
        self.admission.answered(route_id)
        try:
            primary = await asyncio.wait_for(asyncio.shield(copy.tap.answer), _PRIMARY_WAIT)
        except TimeoutError:
            primary = None
        if not isinstance(primary, Answer):
            self.book.skipped(route_id, primary or SkipReason.PRIMARY_ERROR)
            return
        if candidate.truncated or primary.truncated or len(primary.body) > shadow.max_body:
            # (The tap keeps up to a capture's max_body when that one is larger.)
            self.book.skipped(route_id, SkipReason.BODY_TOO_LARGE)
            return
        secondary = None
        if shadow.noise > 0.0 and random.random() < shadow.noise:  # noqa: S311 - a sample, not a secret
            second = await self._ask(copy, copy.primary_side)
            if isinstance(second, Answer) and not second.truncated:
                secondary = second
        rules = compare_rules(shadow)
        try:
            differences = await _compare(primary, candidate, rules)
            noise = None if secondary is None else await _compare(primary, secondary, rules)
        except BodyTooLarge:
            self.book.skipped(route_id, SkipReason.BODY_TOO_LARGE)
            return
        self._observe(route_id, primary, candidate)
        example = functools.partial(_example, copy, primary, candidate, secondary, differences)
        self.book.compared(route_id, differences, noise, example)

    async def _ask(self, copy: _Copy, endpoint: Endpoint) -> Answer | SkipReason:
        shadow = copy.shadow
        try:
            async with asyncio.timeout(shadow.timeout):
                return await self._clients.fetch(
                    endpoint,
                    copy.method,
                    copy.target,
                    copy.request_headers(),
                    max_body=shadow.max_body,
                )
        except TimeoutError:
            return SkipReason.TIMEOUT
        except _SIDE_FAILURES as exc:
            logger.debug(
                "proxy.shadow_side_failed", extra={"route": copy.route_id, "error": repr(exc)}
            )
            return SkipReason.CANDIDATE_ERROR

    def _observe(self, route_id: str, primary: Answer, candidate: Answer) -> None:
        if self.metrics is not None:
            self.metrics.latency(route_id, "primary", primary.latency)
            self.metrics.latency(route_id, "candidate", candidate.latency)


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


@functools.lru_cache(maxsize=512)
def compare_rules(shadow: Shadow) -> CompareRules:
    """The engine's rules for a route's `shadow:` (cached: a Shadow is immutable)."""
    return CompareRules(
        ignore_headers=DEFAULT_IGNORED_HEADERS | shadow.ignore_headers,
        ignore_json=shadow.ignore_json,
        unordered=shadow.unordered,
    )


async def _compare(primary: Answer, other: Answer, rules: CompareRules) -> tuple[Difference, ...]:
    if len(primary.body) + len(other.body) > _THREAD_COMPARE:
        return await asyncio.to_thread(compare, primary, other, rules)
    return compare(primary, other, rules)


def _example(
    copy: _Copy,
    primary: Answer,
    candidate: Answer,
    secondary: Answer | None,
    differences: tuple[Difference, ...],
) -> Example:
    """What an operator sees of one differing request, with its secrets masked."""
    shadow = copy.shadow
    headers, paths = shadow.redact_headers, shadow.redact_json
    return Example(
        at=time.time(),
        method=copy.method,
        target=copy.target,
        request_headers=redact_headers(copy.request_headers(), headers),
        primary=redact_answer(primary, headers, paths),
        candidate=redact_answer(candidate, headers, paths),
        secondary=None if secondary is None else redact_answer(secondary, headers, paths),
        differences=redact_differences(differences, headers, paths),
    )
