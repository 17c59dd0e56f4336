"""The shadow's Prometheus metrics, in the proxy's registry.

    club_proxy_shadow_requests_total{route,outcome,reason}  every request of a shadowed route
    club_proxy_shadow_latency_seconds{route,side}           primary and candidate of compared requests
    club_proxy_shadow_queue_depth                            copies waiting for a worker
    club_proxy_capture_records_total{route,outcome}         captured exchanges: written,
                                                             dropped, error

The request counts are the book's own (`ShadowBook.outcome_counts`), read at
scrape time, so they can never disagree with /-/shadow of this process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping

    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

    from proxy.shadow.results import ShadowBook

__all__ = ["ShadowMetrics"]

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _Collector(Collector):
    def __init__(
        self, book: ShadowBook, depth: Callable[[], int], captures: Mapping[tuple[str, str], int]
    ) -> None:
        self._book = book
        self._depth = depth
        self._captures = captures

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "club_proxy_shadow_requests",
            "Requests of shadowed routes by outcome (match, mismatch, noise, skipped, error)"
            " and, for skipped and error, the reason.",
            labels=["route", "outcome", "reason"],
        )
        for route, outcome, reason, count in self._book.outcome_counts():
            requests.add_metric([route, outcome, reason], count)
        yield requests
        yield GaugeMetricFamily(
            "club_proxy_shadow_queue_depth",
            "Shadow copies waiting for a worker.",
            value=self._depth(),
        )
        records = CounterMetricFamily(
            "club_proxy_capture_records",
            "Exchanges of captured routes: written to the file, dropped (queue or buffers"
            " full), error (the file could not be written).",
            labels=["route", "outcome"],
        )
        for (route, outcome), count in sorted(self._captures.items()):
            records.add_metric([route, outcome], count)
        yield records


class ShadowMetrics:
    """Latency histograms per route and side, plus the book's counts and the queue depth."""

    def __init__(
        self,
        registry: CollectorRegistry,
        book: ShadowBook,
        depth: Callable[[], int],
        captures: Mapping[tuple[str, str], int],
    ) -> None:
        registry.register(_Collector(book, depth, captures))
        self._latency = Histogram(
            "club_proxy_shadow_latency_seconds",
            "Answer time of compared shadow requests, per side (primary, candidate).",
            ["route", "side"],
            buckets=_BUCKETS,
            registry=registry,
        )

    def latency(self, route: str, side: str, seconds: float) -> None:
        self._latency.labels(route, side).observe(seconds)
