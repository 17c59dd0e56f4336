"""The per-process state both request paths share, and how a finished request is recorded.

`Proxy` is reached through `app[PROXY]` on aiohttp's path
(`proxy.webpath.dispatch`) and handed to the fast lane
(`proxy.fastlane.lane.LaneHost`) by the server. `record` is the one place a
request ends: its metrics and its access line, whichever path served it.
"""

from __future__ import annotations

from dataclasses import dataclass
from time import perf_counter
from typing import TYPE_CHECKING, Final, Protocol

from aiohttp import web

from proxy.telemetry.metrics import DEFAULT_ROUTE, PROXY_TARGET, REJECTED_ROUTE

if TYPE_CHECKING:
    from multidict import CIMultiDict, CIMultiDictProxy

    from proxy.core.headers import ForwardingPolicy
    from proxy.routing.model import Route
    from proxy.routing.reload import RoutesWatcher
    from proxy.shadow.runtime import ShadowRuntime
    from proxy.telemetry.accesslog import AccessLog
    from proxy.telemetry.metrics import ProxyMetrics
    from proxy.upstream.pools import UpstreamPools

__all__ = ["CLIENT_CLOSED", "PROXY", "InProcessHandler", "Proxy"]

# Status logged when the client went away before the answer was complete (nginx's 499).
CLIENT_CLOSED: Final = 499


class InProcessHandler(Protocol):
    """The in-process `new` app (`proxy.webpath.inprocess.InProcessApp`)."""

    async def handle(
        self,
        request: web.Request,
        *,
        headers: CIMultiDict[str] | CIMultiDictProxy[str] | None = None,
        request_id: str | None = None,
    ) -> web.StreamResponse:
        """The new app's answer to `request` (not yet prepared, unless it streamed)."""
        ...


@dataclass(slots=True, kw_only=True)
class Proxy:
    """Everything the request paths need: routes, header policy, pools, telemetry."""

    watcher: RoutesWatcher
    policy: ForwardingPolicy
    metrics: ProxyMetrics
    access: AccessLog
    pools: UpstreamPools
    reload_on_sighup: bool = True
    # Plain requests relayed by `proxy.fastlane` when served by ProxyAppRunner.
    fast_lane: bool = True
    inprocess: InProcessHandler | None = None
    # Live shadow (copies of requests of shadowed routes); None: off in this process.
    shadow: ShadowRuntime | None = None
    ready: bool = False

    def record_rejected(
        self,
        *,
        request_id: str,
        status: int,
        body_bytes: int,
        method: str = "-",
        raw_target: str = "",
    ) -> None:
        """Metrics and the access line of a request the proxy refused before routing.

        The parser's rejects keep the defaults: their method and target are
        not trustworthy text, so the line says `-` and an empty path, and the
        request id ties it to the `proxy.bad_request` warning with the
        parser's detail. The duration is 0: no start time is known.
        """
        self.metrics.observe(REJECTED_ROUTE, PROXY_TARGET, method, status, 0.0)
        self.access.log(
            request_id=request_id,
            route=REJECTED_ROUTE,
            target=PROXY_TARGET,
            method=method,
            raw_target=raw_target,
            status=status,
            body_bytes=body_bytes,
            seconds=0.0,
        )

    def record(
        self,
        *,
        request_id: str,
        route: Route | None,
        target: str,
        method: str,
        raw_target: str,
        status: int,
        body_bytes: int,
        start: float,
        aborted: str | None,
        upstream_error: str | None,
    ) -> None:
        """Metrics and the access line of one finished request (both request paths)."""
        seconds = perf_counter() - start
        route_id = route.id if route is not None else DEFAULT_ROUTE
        if upstream_error is not None:
            self.metrics.upstream_error(target, upstream_error)
        self.metrics.observe(route_id, target, method, status, seconds)
        self.access.log(
            request_id=request_id,
            route=route_id,
            target=target,
            method=method,
            raw_target=raw_target,
            status=status,
            body_bytes=body_bytes,
            seconds=seconds,
            aborted=aborted,
        )


PROXY: Final = web.AppKey("proxy", Proxy)
