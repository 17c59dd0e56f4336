"""Prometheus export of the in-memory counters: `CacheStats`, `HubStats`, `QueueStats`.

`StatsCollector` reads the stats at scrape time (nothing is counted twice and
nothing can drift from what the objects report) and yields one metric family
per field, named ``club_compat_<part>_<field>`` (``_total`` for counters):

    club_compat_cache_{hits,misses,corrupt}_total
    club_compat_hub_redis_connected, club_compat_hub_sockets        (gauges)
    club_compat_hub_{redis_disconnects,redis_reconnects,published,publish_failures,
                     local_only,delivered,replayed,slow_consumers}_total
    club_compat_queue_{received,merged,dropped,bad_payloads,delivered,batches,
                       handler_errors,redelivered,connects,reconnects,
                       connection_losses,notifications}_total

The names carry no labels, so one registry holds one collector (a second one
is refused as a duplicate by prometheus-client).
"""

from __future__ import annotations

import enum
from dataclasses import asdict
from typing import TYPE_CHECKING, Final

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping

    from prometheus_client.metrics_core import Metric

    from legacy_compat._cache import Cache
    from legacy_compat._hub import WebSocketHub
    from legacy_compat._queue import PgQueue

__all__ = ["METRIC_PREFIX", "StatsCollector"]

METRIC_PREFIX: Final = "club_compat"


class _Kind(enum.Enum):
    COUNTER = "counter"
    GAUGE = "gauge"


_C, _G = _Kind.COUNTER, _Kind.GAUGE

# part -> field -> (kind, help). Every stats field is listed (a test checks it).
_SPECS: Final[Mapping[str, Mapping[str, tuple[_Kind, str]]]] = {
    "cache": {
        "hits": (_C, "Cache reads that found and decoded a value."),
        "misses": (_C, "Cache reads that found nothing (corrupt values included)."),
        "corrupt": (_C, "Cached values that failed to decode and were deleted."),
    },
    "hub": {
        "redis_connected": (_G, "1 while the hub's Redis subscription is up."),
        "redis_disconnects": (_C, "Losses of the hub's Redis subscription."),
        "redis_reconnects": (_C, "Recoveries of the hub's Redis subscription."),
        "published": (_C, "Hub sends stored in Redis."),
        "publish_failures": (_C, "Hub sends that failed in Redis and fell back to local."),
        "local_only": (_C, "Hub sends delivered to this instance's sockets only."),
        "delivered": (_C, "Live frames written to sockets."),
        "replayed": (_C, "History frames written to resuming sockets."),
        "slow_consumers": (_C, "Sockets closed with 1013 for not keeping up."),
        "sockets": (_G, "Sockets held by this instance."),
    },
    "queue": {
        "received": (_C, "Valid events that arrived."),
        "merged": (_C, "Events folded into an identical pending one (coalesce)."),
        "dropped": (_C, "Events refused because max_pending were waiting."),
        "bad_payloads": (_C, "Notifications that were not a JSON object with a type."),
        "delivered": (_C, "Events handed to the handlers."),
        "batches": (_C, "Handler router calls."),
        "handler_errors": (_C, "Handler calls that raised."),
        "redelivered": (_C, "Durable events fetched again after a reconnect or takeover."),
        "connects": (_C, "Listener connects, the first one included."),
        "reconnects": (_C, "Listener connects after a loss."),
        "connection_losses": (_C, "Listener connections lost or failed."),
        "notifications": (_C, "Notifications received."),
    },
}


def _family(part: str, field: str, value: float | None) -> Metric:
    kind, doc = _SPECS[part][field]
    name = f"{METRIC_PREFIX}_{part}_{field}"
    family = (CounterMetricFamily if kind is _Kind.COUNTER else GaugeMetricFamily)(name, doc)
    if value is not None:
        family.add_metric([], float(value))
    return family


class StatsCollector(Collector):
    """A prometheus-client collector over the stats of a cache, a hub and a queue.

    Give it any of the three; register it in a registry
    (``REGISTRY.register(StatsCollector(cache=..., hub=..., queue=...))``) and
    unregister it when those objects go away.
    """

    def __init__(
        self,
        *,
        cache: Cache | None = None,
        hub: WebSocketHub | None = None,
        queue: PgQueue | None = None,
    ) -> None:
        # part -> a reader of the current values, for the parts given.
        self._sources: dict[str, Callable[[], Mapping[str, float]]] = {}
        if cache is not None:
            self._sources["cache"] = lambda: asdict(cache.stats)
        if hub is not None:
            self._sources["hub"] = hub.stats.as_dict
        if queue is not None:
            self._sources["queue"] = lambda: asdict(queue.stats())

    def collect(self) -> Iterator[Metric]:
        """One family per stats field, with the current value."""
        for part, read in self._sources.items():
            values = read()
            for field in _SPECS[part]:
                yield _family(part, field, values[field])

    def describe(self) -> Iterator[Metric]:
        """The families without values: the registry checks names without reading stats."""
        for part in self._sources:
            for field in _SPECS[part]:
                yield _family(part, field, None)
