"""Prometheus metrics of one proxy process, in its own registry.

Requests are counted by route id, target, method and status, with a latency
histogram per route and target; upstream failures by target and kind; route
reloads are read from the watcher's own counters at scrape time, so they can
never drift from what the admin API reports. Label children are cached in a
plain dict: the request path pays one dict lookup, not prometheus-client's
label validation.

The admin /-/metrics body (`exposition`) adds prometheus-client's default
REGISTRY: the process_* and python_* metrics, and whatever in-process code
registers there (new_services exports the legacy_compat cache, hub and queue
counters as club_compat_*, since it must not depend on the proxy).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from collections.abc import Iterator

    from prometheus_client.metrics_core import Metric

    from proxy.reload import RoutesWatcher
    from proxy.upstreams import UpstreamPools

__all__ = ["CONTENT_TYPE", "DEFAULT_ROUTE", "ProxyMetrics"]

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
# The route label of requests that matched no route (served by `default`).
DEFAULT_ROUTE: Final = "(default)"
# Methods outside this set share one label value, so a scanner sending random
# methods cannot grow the series without bound.
_METHODS: Final = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PROPFIND", "CONNECT", "TRACE"}
)
_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


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
    """`ProxyMetrics.in_flight` and `fast_lane_requests`, read at scrape time."""

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


class ProxyMetrics:
    """The proxy's metrics; `render()` is the /-/metrics body."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self._requests = Counter(
            "club_proxy_requests",
            "Requests answered, by route, target, method and status.",
            ["route", "target", "method", "status"],
            registry=self.registry,
        )
        self._latency = Histogram(
            "club_proxy_request_duration_seconds",
            "Time from request start to the end of the answer.",
            ["route", "target"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
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
        self.registry.register(_InFlightCollector(self))
        self._request_children: dict[tuple[str, str, str, int], Counter] = {}
        self._latency_children: dict[tuple[str, str], Histogram] = {}

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
        key = (route, target, method, status)
        counter = self._request_children.get(key)
        if counter is None:
            counter = self._requests.labels(route, target, method, str(status))
            self._request_children[key] = counter
        counter.inc()
        lkey = (route, target)
        histogram = self._latency_children.get(lkey)
        if histogram is None:
            histogram = self._latency.labels(route, target)
            self._latency_children[lkey] = histogram
        histogram.observe(seconds)

    def upstream_error(self, target: str, kind: str) -> None:
        self._upstream_errors.labels(target, kind).inc()

    def fast_lane_handoff(self, reason: str) -> None:
        """Count one connection leaving the fast lane (`proxy._fastlane`)."""
        self._handoffs.labels(reason).inc()

    def render(self) -> bytes:
        """The Prometheus text exposition of everything above."""
        return generate_latest(self.registry)

    def exposition(self) -> bytes:
        """The /-/metrics body: `render()` plus the process-wide default REGISTRY."""
        if self.registry is REGISTRY:
            return self.render()
        return self.render() + generate_latest(REGISTRY)
