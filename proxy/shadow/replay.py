"""Offline comparison runs: recorded requests replayed to both sides and judged like live copies.

`club-proxy compare` (`proxy.serving.comparecli`) reads capture or HAR files
(`proxy.shadow.records`) and hands the records to `Replay`. Each request goes
to the legacy side, then to the new side, then, for the noise share, to
legacy a second time (Diffy's order). The answers go through the live
shadow's engine (`compare`) into a `ShadowBook`, so a run's report is the
`/-/shadow` model. Unsafe methods are never sent (`unsafe_method`), and
every request not compared is counted with the live shadow's reason: a
legacy side that fails is `primary_error`, a new side `timeout` or
`candidate_error`.

A record's route: with a route table, the route its method and path match
(its `shadow:` rules, or the defaults); without one, the record's own
`route`, else `METHOD path`. Captures mask credentials (`redacted:<hash>`);
`credentials` puts a test credential in place of such a mask.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import math
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import aiohttp

from proxy.routing.model import NEW, SAFE_METHODS, Shadow
from proxy.shadow.compare import BodyTooLarge, compare
from proxy.shadow.copies import SHADOW_HEADER, compare_rules
from proxy.shadow.model import Answer, Example, Outcome, SkipReason
from proxy.shadow.records import read_records
from proxy.shadow.redact import redact_answer, redact_differences, redact_headers

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
    from pathlib import Path

    from proxy.routing.table import RouteTable
    from proxy.shadow.candidate import CandidateClients, Endpoint
    from proxy.shadow.model import CompareRules, Difference
    from proxy.shadow.records import Recorded
    from proxy.shadow.results import ShadowBook

__all__ = [
    "DEFAULT_SHADOW",
    "Replay",
    "RouteRules",
    "Sides",
    "Survey",
    "replay_headers",
    "survey",
]

logger = logging.getLogger(__name__)

# The rules of a route without `shadow:` (or of a run without a route table).
DEFAULT_SHADOW: Final = Shadow(to=NEW)
# A masked value, as a capture stores credentials (`proxy.shadow.redact.mask`).
_MASKED: Final = re.compile(r"redacted:[0-9a-f]{12}")
# Not sent again: hop-by-hop and framing headers (replays carry no body).
_NOT_REPLAYED: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "content-length",
        "expect",
    }
)
# As the live shadow: larger pairs are compared in a thread.
_THREAD_COMPARE: Final = 256 * 1024
_SIDE_FAILURES: Final = (aiohttp.ClientError, OSError)


@dataclass(frozen=True, slots=True, kw_only=True)
class Sides:
    """Where the primary (legacy) and the candidate (new) answer."""

    legacy: Endpoint
    new: Endpoint


class RouteRules:
    """A record's route id and its shadow rules (always with `to: new`: the candidate is new)."""

    __slots__ = ("_table",)

    def __init__(self, table: RouteTable | None) -> None:
        self._table = table

    def __call__(self, record: Recorded) -> tuple[str, Shadow]:
        path = record.target.partition("?")[0]
        if self._table is not None:
            route = self._table.match(record.method, path).route
            if route is not None:
                shadow = route.shadow or DEFAULT_SHADOW
                return route.id, shadow if shadow.to == NEW else dataclasses.replace(shadow, to=NEW)
        return record.route or f"{record.method} {path}", DEFAULT_SHADOW


@dataclass(slots=True)
class Survey:
    """What the inputs hold, read once before anything is sent (and so validated)."""

    total: int = 0
    routes: dict[str, Shadow] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)
    # Lower-case header name -> requests that carry a masked value in it.
    masked: Counter[str] = field(default_factory=Counter)


def survey(paths: Sequence[Path], rules: RouteRules) -> Survey:
    """Read every input to its end (RecordError on the first bad line or entry)."""
    found = Survey()
    for record in _records(paths):
        route_id, shadow = rules(record)
        found.total += 1
        found.routes.setdefault(route_id, shadow)
        found.counts[route_id] += 1
        found.masked.update({n.lower() for n, v in record.headers if _MASKED.search(v)})
    return found


def _records(paths: Sequence[Path]) -> Iterator[Recorded]:
    for path in paths:
        yield from read_records(path)


def replay_headers(
    headers: Iterable[tuple[str, str]], credentials: Mapping[str, str]
) -> tuple[tuple[str, str], ...]:
    """The headers to send: hop-by-hop ones dropped, masks of `credentials` (lower-case names) replaced."""
    sent = []
    for name, value in headers:
        lower = name.lower()
        if lower in _NOT_REPLAYED or lower == SHADOW_HEADER.lower():
            continue
        if lower in credentials and _MASKED.search(value):
            value = credentials[lower]  # noqa: PLW2901 - the substitution is the point
        sent.append((name, value))
    return (*sent, (SHADOW_HEADER, "1"))


@dataclass(slots=True)
class _Latencies:
    legacy: list[float] = field(default_factory=list)
    new: list[float] = field(default_factory=list)


class Replay:
    """Replays records to both sides into `book`; `run(records)` returns when all are judged.

    `noise` overrides every route's share (None: each route's `noise`);
    `only` keeps the routes named (empty: all); `on_result` hears the
    outcome of each request replayed or skipped.
    """

    def __init__(
        self,
        *,
        book: ShadowBook,
        clients: CandidateClients,
        sides: Sides,
        rules: RouteRules,
        credentials: Mapping[str, str],
        concurrency: int = 8,
        noise: float | None = None,
        only: frozenset[str] = frozenset(),
        on_result: Callable[[Outcome], None] | None = None,
    ) -> None:
        self._book, self._clients, self._sides, self._rules = book, clients, sides, rules
        self._credentials = credentials
        self._concurrency = concurrency
        self._noise = noise
        self._only = only
        self._on_result = on_result
        self._drawn: Counter[str] = Counter()  # per route, for an even noise share
        self.latencies: dict[str, _Latencies] = {}
        self.replayed = 0  # requests sent to the sides
        self.excluded = 0  # requests of routes left out by `only`

    async def run(self, records: Iterable[Recorded]) -> None:
        queue: asyncio.Queue[Recorded | None] = asyncio.Queue(self._concurrency)
        workers = [asyncio.create_task(self._work(queue)) for _ in range(self._concurrency)]
        try:
            for record in records:
                await queue.put(record)
            for _ in workers:
                await queue.put(None)
            await asyncio.gather(*workers)
        finally:
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    def latency(self, route_id: str) -> tuple[list[float], list[float]]:
        """(legacy, new) answer times in seconds of the route's compared requests."""
        found = self.latencies.get(route_id)
        return ([], []) if found is None else (found.legacy, found.new)

    async def _work(self, queue: asyncio.Queue[Recorded | None]) -> None:
        while (record := await queue.get()) is not None:
            try:
                outcome = await self._one(record)
            except Exception:  # a bug of ours must not stop the run: counted, logged
                logger.exception("proxy.replay_error", extra={"target": record.target[:200]})
                outcome = self._skip(self._rules(record)[0], SkipReason.CANDIDATE_ERROR)
            if outcome is not None and self._on_result is not None:
                self._on_result(outcome)

    async def _one(self, record: Recorded) -> Outcome | None:
        route_id, shadow = self._rules(record)
        if self._only and route_id not in self._only:
            self.excluded += 1
            return None
        if record.method not in SAFE_METHODS:
            return self._skip(route_id, SkipReason.UNSAFE_METHOD)
        self.replayed += 1
        headers = replay_headers(record.headers, self._credentials)
        answers = await self._answers(route_id, shadow, record, headers)
        if isinstance(answers, SkipReason):
            return self._skip(route_id, answers)
        primary, candidate, secondary = answers
        rules = compare_rules(shadow)
        try:
            differences = await _compare(primary, candidate, rules)
            noise = None if secondary is None else await _compare(primary, secondary, rules)
        except BodyTooLarge:
            return self._skip(route_id, SkipReason.BODY_TOO_LARGE)
        times = self.latencies.setdefault(route_id, _Latencies())
        times.legacy.append(primary.latency)
        times.new.append(candidate.latency)
        example = functools.partial(self._example, record, headers, shadow, answers, differences)
        return self._book.compared(route_id, differences, noise, example)

    async def _answers(
        self, route_id: str, shadow: Shadow, record: Recorded, headers: tuple[tuple[str, str], ...]
    ) -> tuple[Answer, Answer, Answer | None] | SkipReason:
        """Legacy, new, then legacy again for the noise share (Diffy's order); or why not."""
        ask = functools.partial(self._ask, record.method, record.target, headers, shadow)
        primary = await ask(self._sides.legacy)
        if not isinstance(primary, Answer):
            return SkipReason.PRIMARY_ERROR
        candidate = await ask(self._sides.new)
        if not isinstance(candidate, Answer):
            return candidate
        if primary.truncated or candidate.truncated:
            return SkipReason.BODY_TOO_LARGE
        secondary = None
        if self._noise_drawn(route_id, shadow):
            second = await ask(self._sides.legacy)
            secondary = second if isinstance(second, Answer) and not second.truncated else None
        return primary, candidate, secondary

    def _skip(self, route_id: str, reason: SkipReason) -> Outcome:
        self._book.skipped(route_id, reason)
        return reason.outcome

    def _noise_drawn(self, route_id: str, shadow: Shadow) -> bool:
        """Is this request of the route one of its noise share? Spread evenly, not drawn at random."""
        share = shadow.noise if self._noise is None else self._noise
        n = self._drawn[route_id]
        self._drawn[route_id] = n + 1
        return math.floor((n + 1) * share) > math.floor(n * share)

    async def _ask(
        self,
        method: str,
        target: str,
        headers: tuple[tuple[str, str], ...],
        shadow: Shadow,
        endpoint: Endpoint,
    ) -> Answer | SkipReason:
        try:
            async with asyncio.timeout(shadow.timeout):
                return await self._clients.fetch(
                    endpoint, method, target, headers, max_body=shadow.max_body
                )
        except TimeoutError:
            return SkipReason.TIMEOUT
        except _SIDE_FAILURES as exc:
            logger.debug(
                "proxy.replay_side_failed", extra={"side": endpoint[0], "error": repr(exc)}
            )
            return SkipReason.CANDIDATE_ERROR

    def _example(
        self,
        record: Recorded,
        headers: tuple[tuple[str, str], ...],
        shadow: Shadow,
        answers: tuple[Answer, Answer, Answer | None],
        differences: tuple[Difference, ...],
    ) -> Example:
        """Redacted like a live example, and the credentials' headers masked too."""
        names = shadow.redact_headers | frozenset(self._credentials)
        paths = shadow.redact_json
        primary, candidate, secondary = answers
        return Example(
            at=time.time(),
            method=record.method,
            target=record.target,
            request_headers=redact_headers(headers, names),
            primary=redact_answer(primary, names, paths),
            candidate=redact_answer(candidate, names, paths),
            secondary=None if secondary is None else redact_answer(secondary, names, paths),
            differences=redact_differences(differences, names, paths),
        )


async def _compare(primary: Answer, other: Answer, rules: CompareRules) -> tuple[Difference, ...]:
    if len(primary.body) + len(other.body) > _THREAD_COMPARE:
        return await asyncio.to_thread(compare, primary, other, rules)
    return compare(primary, other, rules)
