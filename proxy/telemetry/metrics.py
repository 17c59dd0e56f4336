"""Prometheus metrics of one proxy process, in its own registry.

Requests are counted by route id, target, method and status, with a latency
histogram per route and target; upstream failures by target and kind; route
reloads are read from the watcher's own counters at scrape time, so they can
never drift from what the admin API reports. The per-request counter and
histogram are plain dicts the request path adds to, turned into Prometheus
families at scrape time (`_RequestCollector`): prometheus-client's Counter and
Histogram take a lock and validate on every call, a dozen Python calls per
request. The proxy's event loop is the only writer.

The admin /-/metrics body (`exposition`) adds prometheus-client's default
REGISTRY: the process_* and python_* metrics, and whatever in-process code
registers there (new_services exports the legacy_compat cache, hub and queue
counters as club_compat_*, since it must not depend on the proxy).
"""

from __future__ import annotations

from bisect import bisect_left
from itertools import accumulate
from typing import TYPE_CHECKING, Final

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from collections.abc import Iterator

    from prometheus_client.metrics_core import Metric

    from proxy.routing.reload import RoutesWatcher
    from proxy.upstream.pools import UpstreamPools

__all__ = ["CONTENT_TYPE", "DEFAULT_ROUTE", "PROXY_TARGET", "REJECTED_ROUTE", "ProxyMetrics"]

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
# The route label of requests that matched no route (served by `default`).
DEFAULT_ROUTE: Final = "(default)"
# The route and target of a request the parser rejected: the proxy answered it.
REJECTED_ROUTE: Final = "(rejected)"
PROXY_TARGET: Final = "(proxy)"
# Methods outside this set share one label value, so a scanner sending random
# methods cannot grow the series without bound.
_METHODS: Final = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PROPFIND", "CONNECT", "TRACE"}
)
_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# The `le` labels, as prometheus-client spells them (its floatToGoString, which
# repr() matches for these bounds).
_LE: Final = (*(repr(b) for b in _BUCKETS), "+Inf")


class _ReloadCollector(Collector):
    """Reload counters and the active table's identity, read at scrape time."""

    def __init__(self, watcher: RoutesWatcher) -> None:
        self._watcher = watcher

    def collect(self) -> Iterator[Metric]:
        watcher = self._watcher
        reloads = CounterMetricFamily(
            "club_proxy_route_reloads", "Route table load attempts by result.", labels=["result"]
        )
        reloads.add_metric(["success"], watcher.reload_successes)
        reloads.add_metric(["failure"], watcher.reload_failures)
        yield reloads
        last = GaugeMetricFamily(
            "club_proxy_route_reload_last_ok", "1 when the last reload attempt succeeded."
        )
        last.add_metric([], 1.0 if watcher.last_result.ok else 0.0)
        yield last
        info = GaugeMetricFamily(
            "club_proxy_routes_info", "The active route table.", labels=["digest", "routes"]
        )
        table = watcher.table
        info.add_metric([table.digest, str(len(table.routes))], 1.0)
        yield info


class _PoolCollector(Collector):
    """Requests holding each upstream pool (waiting for a connection included)."""

    def __init__(self, pools: UpstreamPools) -> None:
        self._pools = pools

    def collect(self) -> Iterator[Metric]:
        active = GaugeMetricFamily(
            "club_proxy_upstream_requests_active",
            "Requests using an upstream pool; above its limit, the rest wait for a connection.",
            labels=["upstream"],
        )
        limit = GaugeMetricFamily(
            "club_proxy_upstream_connections_limit",
            "The upstream pool's connection limit (max_connections).",
            labels=["upstream"],
        )
        for name, pool in sorted(self._pools.current.items()):
            active.add_metric([name], pool.active)
            limit.add_metric([name], pool.upstream.max_connections)
        yield active
        yield limit


class _InFlightCollector(Collector):
    """`ProxyMetrics.in_flight` and the fast lane's counters, read at scrape time."""

    def __init__(self, metrics: ProxyMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily("club_proxy_requests_in_flight", "Requests being handled.")
        gauge.add_metric([], self._metrics.in_flight)
        yield gauge
        yield CounterMetricFamily(
            "club_proxy_fast_lane_requests",
            "Requests relayed by the fast lane (the rest went through aiohttp's web layer).",
            value=self._metrics.fast_lane_requests,
        )
        yield CounterMetricFamily(
            "club_proxy_fast_lane_plain_answers",
            "Fast-lane answers read past aiohttp's parser (plain HTTP/1.1 with a Content-Length).",
            value=self._metrics.fast_lane_plain_answers,
        )


class _RequestCollector(Collector):
    """`ProxyMetrics.observe`'s counts and latency buckets, as Prometheus families."""

    def __init__(self, metrics: ProxyMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "club_proxy_requests",
            "Requests answered, by route, target, method and status.",
            labels=["route", "target", "method", "status"],
        )
        for (route, target, method, status), count in sorted(self._metrics.counts.items()):
            requests.add_metric([route, target, method, str(status)], count)
        yield requests
        latency = HistogramMetricFamily(
            "club_proxy_request_duration_seconds",
            "Time from request start to the end of the answer.",
            labels=["route", "target"],
        )
        for (route, target), (buckets, total) in sorted(self._metrics.latency.items()):
            cumulative = list(accumulate(buckets))
            latency.add_metric(
                [route, target],
                [(_LE[i], float(count)) for i, count in enumerate(cumulative)],
                sum_value=total[0],
            )
        yield latency


class ProxyMetrics:
    """The proxy's metrics; `render()` is the /-/metrics body."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        # (route, target, method, status) -> answers; (route, target) -> (a
        # count per latency bucket, the last one +Inf; [sum of seconds]).
        self.counts: dict[tuple[str, str, str, int], int] = {}
        self.latency: dict[tuple[str, str], tuple[list[int], list[float]]] = {}
        self.registry.register(_RequestCollector(self))
        self._upstream_errors = Counter(
            "club_proxy_upstream_errors",
            "Upstream failures by target and kind (connect, timeout, protocol, aborted).",
            ["target", "kind"],
            registry=self.registry,
        )
        self._handoffs = Counter(
            "club_proxy_fast_lane_handoffs",
            "Client connections handed from the fast lane to aiohttp's path, by reason.",
            ["reason"],
            registry=self.registry,
        )
        # A plain int the request path adds to, read at scrape time: a Gauge's
        # inc/dec take a lock each, twice per request.
        self.in_flight = 0
        self.fast_lane_requests = 0
        self.fast_lane_plain_answers = 0
        self.registry.register(_InFlightCollector(self))

    def watch_reloads(self, watcher: RoutesWatcher) -> None:
        """Export the watcher's reload counters and active table."""
        self.registry.register(_ReloadCollector(watcher))

    def watch_pools(self, pools: UpstreamPools) -> None:
        """Export how busy each upstream pool is."""
        self.registry.register(_PoolCollector(pools))

    def observe(self, route: str, target: str, method: str, status: int, seconds: float) -> None:
        """Count one answered request and its latency."""
        if method not in _METHODS:
            method = "OTHER"
        counts = self.counts
        key = (route, target, method, status)
        counts[key] = counts.get(key, 0) + 1
        latency = self.latency.get((route, target))
        if latency is None:
            latency = self.latency[route, target] = ([0] * (len(_BUCKETS) + 1), [0.0])
        # Bucket i holds seconds <= _BUCKETS[i] (Prometheus's `le`); past the last, +Inf.
        latency[0][bisect_left(_BUCKETS, seconds)] += 1
        latency[1][0] += seconds

    def upstream_error(self, target: str, kind: str) -> None:
        self._upstream_errors.labels(target, kind).inc()

    def fast_lane_handoff(self, reason: str) -> None:
        """Count one connection leaving the fast lane (`proxy.fastlane.lane`)."""
        self._handoffs.labels(reason).inc()

    def render(self) -> bytes:
        """The Prometheus text exposition of everything above."""
        return generate_latest(self.registry)

    def exposition(self) -> bytes:
        """The /-/metrics body: `render()` plus the process-wide default REGISTRY."""
        if self.registry is REGISTRY:
            return self.render()
        return self.render() + generate_latest(REGISTRY)
