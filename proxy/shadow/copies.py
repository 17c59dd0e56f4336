"""One shadow copy, off the request path: ask the candidate, wait for the primary, compare.

`CopyWorker.run` is what each of the runtime's worker tasks does with a
queued `Copy` (`proxy.shadow.runtime`): send it to the candidate with the
route's timeout and body cap, wait for the rest of the primary's answer,
ask the primary side a second time for the route's `noise` share (Diffy's
secondary), compare (`proxy.shadow.compare`) and record the outcome
(`proxy.shadow.results.ShadowBook`), every request not compared counted with
its reason.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import aiohttp

from proxy.shadow.compare import BodyTooLarge, compare
from proxy.shadow.model import DEFAULT_IGNORED_HEADERS, Answer, CompareRules, Example, SkipReason
from proxy.shadow.redact import redact_answer, redact_differences, redact_headers

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from proxy.routing.model import Shadow
    from proxy.shadow.admission import Admission
    from proxy.shadow.candidate import CandidateClients, Endpoint
    from proxy.shadow.metrics import ShadowMetrics
    from proxy.shadow.model import Difference
    from proxy.shadow.results import ShadowBook
    from proxy.shadow.tap import PrimaryTap

__all__ = ["SHADOW_HEADER", "Copy", "CopyWorker", "compare_rules"]

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
class Copy:
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


class CopyWorker:
    """What a worker task does with one copy; shared by all of a process's workers."""

    __slots__ = ("_admission", "_book", "_clients", "_metrics")

    def __init__(
        self,
        *,
        book: ShadowBook,
        admission: Admission,
        clients: CandidateClients,
        metrics: Callable[[], ShadowMetrics | None],
    ) -> None:
        self._book = book
        self._admission = admission
        self._clients = clients
        self._metrics = metrics

    async def run(self, copy: Copy) -> None:
        """Compare one copy and record the outcome (or why it was not compared)."""
        shadow, route_id = copy.shadow, copy.route_id
        if self._admission.paused(route_id):
            self._book.skipped(route_id, SkipReason.CANDIDATE_DOWN)
            return
        candidate = await self._ask(copy, copy.candidate)
        if isinstance(candidate, SkipReason):
            self._admission.failed(route_id)
            self._book.skipped(route_id, candidate)
            return
        self._admission.answered(route_id)
        try:
            primary = await asyncio.wait_for(asyncio.shield(copy.tap.answer), _PRIMARY_WAIT)
        except TimeoutError:
            primary = None
        if not isinstance(primary, Answer):
            self._book.skipped(route_id, primary or SkipReason.PRIMARY_ERROR)
            return
        if candidate.truncated or primary.truncated or len(primary.body) > shadow.max_body:
            # (The tap keeps up to a capture's max_body when that one is larger.)
            self._book.skipped(route_id, SkipReason.BODY_TOO_LARGE)
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
            self._book.skipped(route_id, SkipReason.BODY_TOO_LARGE)
            return
        self._observe(route_id, primary, candidate)
        example = functools.partial(_example, copy, primary, candidate, secondary, differences)
        self._book.compared(route_id, differences, noise, example)

    async def _ask(self, copy: Copy, endpoint: Endpoint) -> Answer | SkipReason:
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
        metrics = self._metrics()
        if metrics is not None:
            metrics.latency(route_id, "primary", primary.latency)
            metrics.latency(route_id, "candidate", candidate.latency)


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
    copy: Copy,
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
