"""The admin dashboard: one static page, and the live traffic numbers it polls.

    GET /-/dashboard      the page (HTML, with dashboard.css and dashboard.js beside it)
    GET /-/stats          per route and target: requests, errors (5xx), p50/p99;
                          per shadowed route and side: compared answers, p50/p99

The page is plain HTML, CSS and JavaScript from `proxy/serving/static/`, read
once when the admin app is built. It fetches `/-/routes`, `/-/shadow` and
`/-/stats` itself, every two seconds, and computes rates from two successive
`/-/stats` answers (`at` is the server's clock). It builds its DOM from text
only, since bodies and paths in shadow examples come from upstreams.

The stats are read from the proxy's Prometheus registry, so they always agree
with /-/metrics: totals since the process started, and quantiles estimated
from the histogram buckets the way Prometheus's `histogram_quantile` does.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from importlib import resources
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web
from prometheus_client import CollectorRegistry

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from aiohttp.typedefs import Handler

    from proxy.core.state import Proxy

__all__ = ["add_dashboard", "quantile", "traffic_stats"]

_REQUESTS: Final = "club_proxy_requests_total"
_DURATION: Final = "club_proxy_request_duration_seconds_bucket"
_SHADOW_LATENCY: Final = "club_proxy_shadow_latency_seconds_bucket"
_ASSETS: Final = {
    "dashboard.html": "text/html",
    "dashboard.css": "text/css",
    "dashboard.js": "text/javascript",
}
# Everything the page loads comes from the admin port; no inline script or style,
# so a body that slipped into the DOM as markup still could not run.
_PAGE_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_REGISTRY: Final = web.AppKey("dashboard_registry", CollectorRegistry)

# (upper bound, cumulative count) pairs of one histogram, +Inf last.
_Buckets = list[tuple[float, float]]


def quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """The `q` quantile of a histogram, linearly interpolated inside its bucket.

    `buckets` are (upper bound, cumulative count), sorted, the last one +Inf.
    A quantile that falls in the +Inf bucket is the highest finite bound;
    None when the histogram is empty (Prometheus's `histogram_quantile`).
    """
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower
            if count <= below:  # q == 0 and an empty first bucket
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


def _samples(
    registry: CollectorRegistry, names: set[str]
) -> Iterable[tuple[str, dict[str, str], float]]:
    for family in registry.collect():
        for sample in family.samples:
            if sample.name in names:
                yield sample.name, sample.labels, sample.value


def traffic_stats(registry: CollectorRegistry) -> dict[str, Any]:
    """The `/-/stats` body, from the proxy's registry."""
    counts: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0])
    durations: dict[tuple[str, str], _Buckets] = defaultdict(list)
    shadow: dict[tuple[str, str], _Buckets] = defaultdict(list)
    for name, labels, value in _samples(registry, {_REQUESTS, _DURATION, _SHADOW_LATENCY}):
        if name == _REQUESTS:
            totals = counts[labels["route"], labels["target"]]
            totals[0] += value
            if labels["status"].startswith("5"):
                totals[1] += value
        elif name == _DURATION:
            durations[labels["route"], labels["target"]].append((float(labels["le"]), value))
        else:
            shadow[labels["route"], labels["side"]].append((float(labels["le"]), value))
    for buckets in (*durations.values(), *shadow.values()):
        buckets.sort()
    traffic = [
        {
            "route": route,
            "target": target,
            "requests": int(requests),
            "errors": int(errors),
            **_quantiles(durations.get((route, target), [])),
        }
        for (route, target), (requests, errors) in sorted(counts.items())
    ]
    latency = [
        {"route": route, "side": side, "count": int(buckets[-1][1]), **_quantiles(buckets)}
        for (route, side), buckets in sorted(shadow.items())
    ]
    return {"at": time.time(), "traffic": traffic, "shadow_latency": latency}


def _quantiles(buckets: _Buckets) -> dict[str, float | None]:
    return {"p50": quantile(0.5, buckets), "p99": quantile(0.99, buckets)}


async def _stats(request: web.Request) -> web.Response:
    return web.json_response(traffic_stats(request.app[_REGISTRY]))


def _asset_handler(name: str, headers: dict[str, str]) -> Handler:
    body = resources.files("proxy.serving").joinpath("static", name).read_bytes()
    content_type = f"{_ASSETS[name]}; charset=utf-8"

    async def asset(_: web.Request) -> web.Response:
        return web.Response(body=body, headers={**headers, "Content-Type": content_type})

    return asset


def add_dashboard(app: web.Application, proxy: Proxy) -> None:
    """Serve the dashboard and `/-/stats` from the admin `app` of `proxy`."""
    app[_REGISTRY] = proxy.metrics.registry
    app.router.add_get("/-/dashboard", _asset_handler("dashboard.html", _PAGE_HEADERS))
    for name in ("dashboard.css", "dashboard.js"):
        app.router.add_get(f"/-/{name}", _asset_handler(name, {"Cache-Control": "no-store"}))
    app.router.add_get("/-/stats", _stats)
