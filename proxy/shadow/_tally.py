"""Counts, difference groups and examples of shadowed routes, in memory.

One shape serves three purposes in `ShadowBook`: this process's own totals,
the deltas not yet written to the store, and the totals read back from it
for a report. A group is keyed by `Difference.signature`
(`changed:$.items[*].x`); its kind and collapsed path are the two halves of
the signature.

Bounds: at most `MAX_GROUPS` groups per route (further new signatures are
refused and counted in `groups_dropped`, once per refused occurrence) and
`MAX_EXAMPLES` examples per group: slots 0-3 keep the first examples, the
last slot holds the latest one, replaced at most every `EXAMPLE_REFRESH`
seconds, so a group shows both how it started and that it still happens.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from collections.abc import Iterator

    from proxy.shadow.model import Outcome, SkipReason

__all__ = [
    "EXAMPLE_REFRESH",
    "LATEST_SLOT",
    "MAX_EXAMPLES",
    "MAX_GROUPS",
    "GroupTally",
    "KeptExample",
    "RouteTally",
    "Tally",
    "split_signature",
]

MAX_GROUPS: Final = 200
MAX_EXAMPLES: Final = 5
LATEST_SLOT: Final = MAX_EXAMPLES - 1
EXAMPLE_REFRESH: Final = 300.0


@dataclass(frozen=True, slots=True, kw_only=True)
class KeptExample:
    """An example as kept: its request time and its rendered JSON (bodies already cut)."""

    at: float
    data: dict[str, Any]


@dataclass(slots=True, kw_only=True)
class GroupTally:
    """One difference signature of one route."""

    first_seen: float
    last_seen: float
    count: int = 0  # requests where primary and candidate differed here
    counted: int = 0  # of those, the ones where it made the request a mismatch
    noise_count: int = 0  # noise samples where the primary differed from itself here
    examples: dict[int, KeptExample] = field(default_factory=dict)  # slot -> example

    def seen(self, now: float) -> None:
        self.first_seen = min(self.first_seen, now)
        self.last_seen = max(self.last_seen, now)

    def wanted_slot(self, now: float) -> int | None:
        """The slot a new example would fill, or None when the group wants none now."""
        for slot in range(MAX_EXAMPLES):
            if slot not in self.examples:
                return slot
        if now - self.examples[LATEST_SLOT].at >= EXAMPLE_REFRESH:
            return LATEST_SLOT
        return None

    def keep(self, slot: int, example: KeptExample) -> None:
        """Keep `example` in `slot`: a first-examples slot keeps its first, the last the newest."""
        mine = self.examples.get(slot)
        if mine is None or (slot == LATEST_SLOT and example.at > mine.at):
            self.examples[slot] = example

    def merge(self, other: GroupTally) -> None:
        self.seen(other.first_seen)
        self.seen(other.last_seen)
        self.count += other.count
        self.counted += other.counted
        self.noise_count += other.noise_count
        for slot, example in other.examples.items():
            self.keep(slot, example)


def split_signature(signature: str) -> tuple[str, str]:
    """`changed:$.items[*].x` -> (`changed`, `$.items[*].x`)."""
    kind, _, path = signature.partition(":")
    return kind, path


@dataclass(slots=True, kw_only=True)
class RouteTally:
    """Everything counted for one route."""

    counts: Counter[tuple[Outcome, SkipReason | None]] = field(default_factory=Counter)
    noise_samples: int = 0
    groups: dict[str, GroupTally] = field(default_factory=dict)
    groups_dropped: int = 0
    examples_dropped: int = 0

    def group(self, signature: str, now: float) -> GroupTally | None:
        """The group of `signature`, created if the route has room (None: refused, counted)."""
        if signature not in self.groups and len(self.groups) >= MAX_GROUPS:
            self.groups_dropped += 1
            return None
        return self.ensure(signature, now)

    def ensure(self, signature: str, now: float) -> GroupTally:
        """The group of `signature`, created whatever the bound (for deltas of admitted groups)."""
        found = self.groups.get(signature)
        if found is None:
            found = self.groups[signature] = GroupTally(first_seen=now, last_seen=now)
        found.seen(now)
        return found

    def merge(self, other: RouteTally) -> None:
        self.counts.update(other.counts)
        self.noise_samples += other.noise_samples
        self.groups_dropped += other.groups_dropped
        self.examples_dropped += other.examples_dropped
        for signature, group in other.groups.items():
            mine = self.groups.get(signature)
            if mine is None:
                self.groups[signature] = mine = GroupTally(
                    first_seen=group.first_seen, last_seen=group.last_seen
                )
            mine.merge(group)

    def prune(self, cutoff: float) -> None:
        """Forget the groups last seen before `cutoff` (retention)."""
        for signature in [s for s, g in self.groups.items() if g.last_seen < cutoff]:
            del self.groups[signature]

    def noise_count(self, signature: str) -> int:
        group = self.groups.get(signature)
        return 0 if group is None else group.noise_count


class Tally:
    """RouteTally per route id."""

    __slots__ = ("routes",)

    def __init__(self) -> None:
        self.routes: dict[str, RouteTally] = {}

    def __bool__(self) -> bool:
        return bool(self.routes)

    def route(self, route_id: str) -> RouteTally:
        found = self.routes.get(route_id)
        if found is None:
            found = self.routes[route_id] = RouteTally()
        return found

    def merge(self, other: Tally) -> None:
        for route_id, tally in other.routes.items():
            self.route(route_id).merge(tally)

    def examples(self) -> int:
        """How many examples are held, over every route."""
        return sum(len(g.examples) for r in self.routes.values() for g in r.groups.values())

    def items(self) -> Iterator[tuple[str, RouteTally]]:
        yield from self.routes.items()
