"""The results of shadowed routes: counts, difference groups, noise, the verdict.

`ShadowBook` counts every shadowed request (`skipped`, `compared`), groups
differences by signature, learns the primary's noise (`proxy.shadow._noise`)
and answers `/-/shadow` (`report`). Without a store it keeps everything in
this process. With one (`ShadowStore`) it also keeps the deltas since the
last write and writes them every `flush_interval` in one transaction, so
every replica reports the same totals; the noise learned by all replicas is
read back at each write and used by the next decisions.

The store never gets in the way of serving: nothing it raises reaches a
caller. While it is down deltas accumulate (counts are never lost; examples
past `MAX_PENDING_EXAMPLES` are dropped and counted), one warning is logged
per outage and an info when it is back, and `report` answers from this
process's own counts with `"store_ok": false`.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Final

from proxy.routing.model import Verdict
from proxy.shadow._examples import clean_text, example_json
from proxy.shadow._noise import decide, is_noisy
from proxy.shadow._report import RouteInfo, route_json
from proxy.shadow._suggest import RuleKind, Suggestion, suggest, suggestions_yaml
from proxy.shadow._sync import StoreLink
from proxy.shadow._tally import GroupTally, KeptExample, RouteTally, Tally

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence

    from proxy.routing.model import Shadow, ShadowStore
    from proxy.shadow._noise import Decision
    from proxy.shadow._rows import StoredRoute
    from proxy.shadow.model import Difference, Example, Outcome, SkipReason

__all__ = ["RuleKind", "ShadowBook", "Suggestion", "suggestions_yaml"]

logger = logging.getLogger(__name__)

# Examples waiting for the store, over all routes; past this they are dropped.
MAX_PENDING_EXAMPLES: Final = 100


class ShadowBook:
    """Every shadowed route's results, in memory and optionally in PostgreSQL."""

    def __init__(
        self, *, store: ShadowStore | None = None, now: Callable[[], float] = time.time
    ) -> None:
        self._now = now
        self._specs: dict[str, Shadow] = {}  # every spec configured, the latest kept
        self._active: tuple[str, ...] = ()
        self._local = Tally()  # this process's own totals
        self._link = (
            None
            if store is None
            else StoreLink(store, now=now, specs=self._specs, local=self._local)
        )

    @property
    def store_kind(self) -> str:
        """`memory` or `postgresql`."""
        return "memory" if self._link is None else "postgresql"

    async def start(self) -> None:
        """Connect to the store and migrate it, then write every `flush_interval`.

        A store out of reach is logged and tried again in the background.
        """
        if self._link is not None:
            await self._link.start()

    async def close(self) -> None:
        """Stop writing, try one last write (at most two seconds), close the pool."""
        if self._link is not None:
            await self._link.close()

    def configure(self, shadows: Mapping[str, Shadow]) -> None:
        """Route id -> its `shadow:`, from the active route table (at start and each reload)."""
        self._specs.update(shadows)
        self._active = tuple(shadows)

    def skipped(self, route_id: str, reason: SkipReason) -> None:
        """Count a request not compared: skipped by choice, or an error of a side."""
        for tally in self._tallies(route_id):
            tally.counts[reason.outcome, reason] += 1

    def compared(
        self,
        route_id: str,
        differences: Sequence[Difference],
        noise: Sequence[Difference] | None,
        example: Callable[[], Example],
    ) -> Outcome:
        """Judge one comparison, count it and group its differences; its outcome.

        `noise` is primary-vs-secondary when the request was noise-sampled.
        `example()` is called only when one of its groups still wants an example.
        """
        now = self._now()
        if noise is not None:
            self._learn_noise(route_id, noise, now)
        decision = decide(differences, noise, lambda s: self._noisy(route_id, s))
        for tally in self._tallies(route_id):
            tally.counts[decision.outcome, None] += 1
        counted = set(decision.counted)
        for signature in (*decision.counted, *decision.discounted):
            for group in self._groups(route_id, signature, now):
                group.count += 1
                group.counted += signature in counted
        self._take_example(route_id, decision, example, now)
        return decision.outcome

    def outcome_counts(self) -> Iterator[tuple[str, str, str, int]]:
        """(route id, outcome, reason or "", n) of this process's own counts, for metrics."""
        for route_id, tally in list(self._local.items()):
            for (outcome, reason), n in list(tally.counts.items()):
                yield route_id, outcome.value, "" if reason is None else reason.value, n

    async def report(
        self, route_id: str | None = None, *, examples: bool = False
    ) -> dict[str, Any] | None:
        """The admin JSON: every route, or one route with its examples (None: unknown).

        `examples=True` adds the examples to every route of the list too.
        """
        tally, stored, ok = await self._totals(route_id, examples=examples or route_id is not None)
        if route_id is not None:
            if route_id not in self._specs and route_id not in tally.routes:
                return None
            found = self._route_json(route_id, tally, stored, examples=True)
            return {**found, "store": self.store_kind, "store_ok": ok}
        listed = [*self._active, *sorted(set(tally.routes) - set(self._active))]
        return {
            "store": self.store_kind,
            "store_ok": ok,
            "routes": [self._route_json(r, tally, stored, examples=examples) for r in listed],
        }

    async def reset(self, route_id: str) -> bool:
        """Forget the route's results, here and in the store; False for an unknown route.

        A store out of reach gets the reset before the next write.
        """
        known = route_id in self._specs or route_id in self._local.routes
        self._local.routes.pop(route_id, None)
        existed = None if self._link is None else await self._link.reset(route_id)
        return known or bool(existed)

    async def suggestions(self, route_id: str) -> list[Suggestion]:
        """The ignore rules the route's learned noise suggests (`suggestions_yaml` renders them)."""
        tally, _, _ = await self._totals(route_id, examples=False)
        route = tally.routes.get(route_id)
        return [] if route is None else suggest(route)

    # Counting.

    def _tallies(self, route_id: str) -> list[RouteTally]:
        """Where a count goes: this process's totals, and the deltas when there is a store."""
        if self._link is None:
            return [self._local.route(route_id)]
        return [self._local.route(route_id), self._link.pending.route(route_id)]

    def _groups(self, route_id: str, signature: str, now: float) -> list[GroupTally]:
        """The signature's group in each tally; none when the route has no room (counted)."""
        signature = clean_text(signature)
        local = self._local.route(route_id).group(signature, now)
        if local is None:
            if self._link is not None:
                self._link.pending.route(route_id).groups_dropped += 1
            return []
        if self._link is None:
            return [local]
        return [local, self._link.pending.route(route_id).ensure(signature, now)]

    def _learn_noise(self, route_id: str, noise: Sequence[Difference], now: float) -> None:
        for tally in self._tallies(route_id):
            tally.noise_samples += 1
        for signature in dict.fromkeys(d.signature for d in noise):
            for group in self._groups(route_id, signature, now):
                group.noise_count += 1

    def _noisy(self, route_id: str, signature: str) -> bool:
        """Is the signature noisy by the noise stats of every replica known so far?"""
        signature = clean_text(signature)
        sources = [self._local] if self._link is None else self._link.noise_sources()
        routes = [s.routes[route_id] for s in sources if route_id in s.routes]
        samples = sum(r.noise_samples for r in routes)
        return is_noisy(sum(r.noise_count(signature) for r in routes), samples)

    def _take_example(
        self, route_id: str, decision: Decision, example: Callable[[], Example], now: float
    ) -> None:
        local = self._local.route(route_id)
        wanted = []
        for signature in (*decision.counted, *decision.discounted):
            group = local.groups.get(clean_text(signature))
            slot = None if group is None else group.wanted_slot(now)
            if slot is not None:
                wanted.append((clean_text(signature), slot))
        if not wanted:
            return
        if self._link is not None and self._link.waiting_examples() >= MAX_PENDING_EXAMPLES:
            for tally in self._tallies(route_id):
                tally.examples_dropped += 1
            return
        try:
            taken = example()
            kept = KeptExample(at=taken.at, data=example_json(taken))
        except Exception:
            # The caller's code: a failure here must not stop counting.
            logger.exception("proxy.shadow.example_failed", extra={"route": route_id})
            return
        for signature, slot in wanted:
            for group in self._groups(route_id, signature, now):
                group.keep(slot, kept)

    # Reporting.

    def _route_json(
        self, route_id: str, tally: Tally, stored: Mapping[str, StoredRoute], *, examples: bool
    ) -> dict[str, Any]:
        spec = self._specs.get(route_id)
        shadow_to: str | None
        if spec is not None:
            shadow_to, verdict = spec.to, spec.verdict
        else:
            known = stored.get(route_id)
            shadow_to, verdict = (None, Verdict()) if known is None else _stored_verdict(known)
        info = RouteInfo(
            route_id=route_id,
            shadow_to=shadow_to,
            active=route_id in self._active,
            min_requests=verdict.min_requests,
            min_match=verdict.min_match,
        )
        found = tally.routes.get(route_id)
        return route_json(info, RouteTally() if found is None else found, examples=examples)

    async def _totals(
        self, route_id: str | None, *, examples: bool
    ) -> tuple[Tally, Mapping[str, StoredRoute], bool]:
        """The totals to report: the store's after writing ours, else this process's own."""
        found = None if self._link is None else await self._link.read(route_id, examples=examples)
        if found is None:
            return self._local, {}, self._link is None
        return *found, True


def _stored_verdict(known: StoredRoute) -> tuple[str | None, Verdict]:
    default = Verdict()
    return known.shadow_to, Verdict(
        min_requests=default.min_requests if known.min_requests is None else known.min_requests,
        min_match=default.min_match if known.min_match is None else known.min_match,
    )
