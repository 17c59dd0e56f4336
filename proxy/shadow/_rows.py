"""Tallies to the store's rows and back (the SQL is in sql/queries.sql)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from proxy.shadow._tally import (
    LATEST_SLOT,
    MAX_GROUPS,
    GroupTally,
    KeptExample,
    RouteTally,
    Tally,
    split_signature,
)
from proxy.shadow.model import Outcome, SkipReason

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    import asyncpg

    from proxy.routing.model import Shadow

__all__ = ["StoredRoute", "WriteRows", "noise_tally", "read_tally", "to_time"]

Row = tuple[Any, ...]


def to_time(at: float) -> datetime:
    """Unix time as the aware datetime asyncpg sends as timestamptz."""
    return datetime.fromtimestamp(at, UTC)


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredRoute:
    """What the route table said of a route when a replica last wrote its results."""

    shadow_to: str | None
    min_requests: int | None
    min_match: float | None


@dataclass(slots=True, kw_only=True)
class WriteRows:
    """The rows of one write, groups past the stored bound already left out."""

    routes: list[Row] = field(default_factory=list)
    outcomes: list[Row] = field(default_factory=list)
    groups: list[Row] = field(default_factory=list)
    examples: list[Row] = field(default_factory=list)  # for a first free slot
    latest: list[Row] = field(default_factory=list)  # for the latest-example slot

    @classmethod
    def of(
        cls,
        batch: Tally,
        stored: set[tuple[str, str]],
        specs: Mapping[str, Shadow],
        *,
        now: float,
    ) -> WriteRows:
        """`stored`: the (route, signature) pairs already in the store, for the group bound."""
        rows = cls()
        for route_id, tally in batch.items():
            refused = rows._add_groups(route_id, tally, stored)
            rows._add_route(route_id, tally, specs.get(route_id), refused, now)
            rows.outcomes.extend(
                (route_id, outcome.value, "" if reason is None else reason.value, n)
                for (outcome, reason), n in tally.counts.items()
                if n
            )
        return rows

    def _add_route(
        self, route_id: str, tally: RouteTally, spec: Shadow | None, refused: int, now: float
    ) -> None:
        self.routes.append(
            (
                route_id,
                None if spec is None else spec.to,
                None if spec is None else spec.verdict.min_requests,
                None if spec is None else spec.verdict.min_match,
                tally.noise_samples,
                tally.groups_dropped + refused,
                tally.examples_dropped,
                to_time(now),
            )
        )

    def _add_groups(self, route_id: str, tally: RouteTally, stored: set[tuple[str, str]]) -> int:
        """Add the admitted groups and their examples; the refused occurrences."""
        room = MAX_GROUPS - sum(1 for r, _ in stored if r == route_id)
        refused = 0
        # Oldest first: when the bound bites, the signatures seen first keep their place.
        for signature, group in sorted(tally.groups.items(), key=lambda i: i[1].first_seen):
            if (route_id, signature) not in stored:
                if room <= 0:
                    refused += max(1, group.count + group.noise_count)
                    continue
                room -= 1
            self._add_group(route_id, signature, group)
        return refused

    def _add_group(self, route_id: str, signature: str, group: GroupTally) -> None:
        kind, path = split_signature(signature)
        self.groups.append(
            (
                route_id,
                signature,
                kind,
                path,
                group.count,
                group.counted,
                group.noise_count,
                to_time(group.first_seen),
                to_time(group.last_seen),
            )
        )
        for slot, example in sorted(group.examples.items()):
            data = orjson.dumps(example.data).decode()
            if slot == LATEST_SLOT:
                self.latest.append((route_id, signature, slot, to_time(example.at), data))
            else:
                self.examples.append((route_id, signature, to_time(example.at), data, LATEST_SLOT))


def noise_tally(rows: Iterable[asyncpg.Record]) -> Tally:
    """The shared noise stats: per route its samples, per signature its noise count."""
    tally = Tally()
    for row in rows:
        route = tally.route(row["route_id"])
        route.noise_samples = row["noise_samples"]
        if row["signature"] is not None:
            route.groups[row["signature"]] = GroupTally(
                first_seen=0.0, last_seen=0.0, noise_count=row["noise_count"]
            )
    return tally


def read_tally(
    routes: Iterable[asyncpg.Record],
    outcomes: Iterable[asyncpg.Record],
    groups: Iterable[asyncpg.Record],
    examples: Iterable[asyncpg.Record],
) -> tuple[Tally, dict[str, StoredRoute]]:
    """The stored totals as a Tally, and what the route table said of each route."""
    tally = Tally()
    specs = {}
    for row in routes:
        route = tally.route(row["route_id"])
        route.noise_samples = row["noise_samples"]
        route.groups_dropped = row["groups_dropped"]
        route.examples_dropped = row["examples_dropped"]
        specs[row["route_id"]] = StoredRoute(
            shadow_to=row["shadow_to"],
            min_requests=row["min_requests"],
            min_match=row["min_match"],
        )
    for row in outcomes:
        # A value a newer replica wrote that this one does not know is left out.
        with contextlib.suppress(ValueError):
            reason = SkipReason(row["reason"]) if row["reason"] else None
            tally.route(row["route_id"]).counts[Outcome(row["outcome"]), reason] += row["n"]
    for row in groups:
        tally.route(row["route_id"]).groups[row["signature"]] = GroupTally(
            first_seen=row["first_seen"].timestamp(),
            last_seen=row["last_seen"].timestamp(),
            count=row["count"],
            counted=row["counted"],
            noise_count=row["noise_count"],
        )
    for row in examples:
        group = tally.route(row["route_id"]).groups.get(row["signature"])
        if group is not None:
            data = orjson.loads(row["example"])
            group.examples[row["slot"]] = KeptExample(at=row["at"].timestamp(), data=data)
    return tally, specs
