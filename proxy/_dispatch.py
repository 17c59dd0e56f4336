"""The request path: one catch-all handler in front of the route table.

Each request reads `watcher.table` once and keeps that table to its end, so a
reload never changes a request in flight. The table's match (and canary
choice) names a target: an HTTP upstream (streamed by `proxy.forward`, or
relayed by `proxy.websocket` for an upgrade) or `new`, answered in-process by
the new application without an HTTP hop (or forwarded when `new` is a URL).
Every request ends with one access line and its metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from time import perf_counter
from typing import TYPE_CHECKING, Final

import aiohttp
from aiohttp import web
from yarl import URL

from proxy.canary import choose_target
from proxy.forward import (
    ErrorResponse,
    PassThroughResponse,
    error_response,
    forward,
    refusal,
)
from proxy.headers import request_id_from, upstream_request_headers
from proxy.metrics import DEFAULT_ROUTE, PROXY_TARGET, REJECTED_ROUTE
from proxy.model import NEW, Upstream
from proxy.websocket import is_websocket_upgrade, relay_websocket

if TYPE_CHECKING:
    from multidict import CIMultiDict

    from proxy.accesslog import AccessLog
    from proxy.headers import ForwardingPolicy
    from proxy.inprocess import InProcessApp
    from proxy.metrics import ProxyMetrics
    from proxy.model import NewTarget, Route
    from proxy.reload import RoutesWatcher
    from proxy.routes import RouteTable
    from proxy.upstreams import UpstreamPools

__all__ = ["CLIENT_CLOSED", "Proxy", "route_timeout"]

# Status logged when the client went away before the answer was complete (nginx's 499).
CLIENT_CLOSED: Final = 499
_UPSTREAM_KINDS: Final = frozenset({"connect", "timeout", "protocol"})


@dataclass(slots=True, kw_only=True)
class _Call:
    """One request on its way: what it matched, on which table, since when."""

    request: web.Request
    rid: str
    table: RouteTable
    route: Route | None
    target: str
    target_bytes: str
    start: float
    # Counts the body bytes of an answer the proxy does not relay itself.
    sent: _BodyCounter | None = None
    aborted: str | None = None

    def count_body(self) -> None:
        """Count the body bytes aiohttp writes for this request from now on."""
        if self.sent is None:
            self.sent = _BodyCounter()
            self.request.writer.on_body_write = self.sent


class _BodyCounter:
    """`AbstractStreamWriter.on_body_write` callback: body bytes, headers and framing excluded."""

    __slots__ = ("bytes",)

    def __init__(self) -> None:
        self.bytes = 0

    def __call__(self, size: int, _output_size: int) -> None:
        self.bytes += size


@dataclass(slots=True, kw_only=True)
class Proxy:
    """Everything the request path needs, reached through `app[PROXY]`."""

    watcher: RoutesWatcher
    policy: ForwardingPolicy
    metrics: ProxyMetrics
    access: AccessLog
    pools: UpstreamPools
    reload_on_sighup: bool = True
    # Plain requests relayed by `proxy._fastlane` when served by ProxyAppRunner.
    fast_lane: bool = True
    inprocess: InProcessApp | None = None
    ready: bool = False
    # The `new` target as an upstream when routes.yaml gives it a URL.
    _new_target: NewTarget | None = None
    _new_upstream: Upstream | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """The catch-all handler."""
        target_bytes = request.raw_path
        if target_bytes[:1] != "/":
            # absolute-form (RFC 9112 §3.2.2): forward its origin-form, bytes kept.
            target_bytes = request.rel_url.raw_path_qs
        table = self.watcher.table
        match = table.match(request.method, target_bytes.partition("?")[0])
        route = match.route
        target = match.target
        if route is not None and route.canary is not None:
            target = choose_target(match, request.headers, request.cookies)
        call = _Call(
            request=request,
            rid=request_id_from(request.headers.get("X-Request-ID")),
            table=table,
            route=route,
            target=target,
            target_bytes=target_bytes,
            start=perf_counter(),
        )
        response: web.StreamResponse | None = None
        self.metrics.in_flight += 1
        try:
            response = refusal(request, self.policy, call.rid) or await self._dispatch(call)
            if type(response) is not PassThroughResponse:
                await _write(call, response)
            return response
        finally:
            self.metrics.in_flight -= 1
            self._record(call, response)

    async def _dispatch(self, call: _Call) -> web.StreamResponse:
        if call.target == NEW:
            if self.inprocess is not None:
                return await self._in_process(self.inprocess, call)
            upstream = self._new_as_upstream(call.table)
            if upstream is None:
                error = "new target not configured"
                return error_response(500, error, request_id=call.rid, kind="config")
        else:
            upstream = call.table.upstreams[call.target]
        pool = self.pools.acquire(upstream)
        try:
            request = call.request
            if "Upgrade" in request.headers and is_websocket_upgrade(request):
                return await self._websocket(call, pool.session, pool.base, upstream)
            return await forward(
                request,
                call.target_bytes,
                pool=pool,
                policy=self.policy,
                request_id=call.rid,
                client_timeout=route_timeout(call.route, upstream),
            )
        finally:
            self.pools.release(pool)

    async def _websocket(
        self, call: _Call, session: aiohttp.ClientSession, base: str, upstream: Upstream
    ) -> web.StreamResponse:
        request = call.request
        return await relay_websocket(
            request,
            url=URL(base + call.target_bytes, encoded=True),
            headers=self._upstream_headers(call),
            session=session,
            max_msg_size=upstream.ws_max_message_size,
            request_id=call.rid,
        )

    async def _in_process(self, inprocess: InProcessApp, call: _Call) -> web.StreamResponse:
        # The new handler sees what an upstream would: cleaned headers plus
        # X-Forwarded-*, Via and X-Request-ID. InProcessApp turns its errors
        # into answers (500 JSON).
        request = call.request
        headers = self._upstream_headers(call)
        if "Upgrade" in request.headers and is_websocket_upgrade(request):
            # Upgrade and Connection are hop-by-hop between two HTTP hops, but
            # in-process the new handler is the WebSocket endpoint and needs them.
            headers["Upgrade"] = request.headers["Upgrade"]
            headers["Connection"] = "Upgrade"
        # Counted from here: a streaming handler writes before it returns.
        call.count_body()
        response = await inprocess.handle(request, headers=headers, request_id=call.rid)
        if not response.prepared:
            response.headers["X-Request-ID"] = call.rid
        return response

    def _upstream_headers(self, call: _Call) -> CIMultiDict[str]:
        # What an upstream would see: cleaned headers plus the gateway's own.
        request = call.request
        return upstream_request_headers(
            request.headers,
            policy=self.policy,
            peer=request.remote,
            scheme=request.scheme,
            request_id=call.rid,
        )

    def _new_as_upstream(self, table: RouteTable) -> Upstream | None:
        new = table.new
        if new is None or new.url is None:
            return None  # the loader rejects such a table; a bug if seen
        if new is not self._new_target or self._new_upstream is None:
            self._new_target, self._new_upstream = new, Upstream(name=NEW, url=new.url)
        return self._new_upstream

    def _record(self, call: _Call, response: web.StreamResponse | None) -> None:
        aborted: str | None = None
        upstream_error: str | None = None
        body_bytes = 0
        status = CLIENT_CLOSED
        if type(response) is PassThroughResponse:
            aborted, body_bytes, status = response.aborted, response.body_bytes, response.status
            if aborted == "upstream":
                upstream_error = "aborted"
        elif response is not None:
            status, aborted = response.status, call.aborted
            body_bytes = call.sent.bytes if call.sent is not None else 0
            if type(response) is ErrorResponse and response.kind in _UPSTREAM_KINDS:
                upstream_error = response.kind
        else:
            aborted = "client"
        if aborted == "client":
            # Logged as the fast lane logs it (and nginx): the client left.
            status = CLIENT_CLOSED
        self.record(
            request_id=call.rid,
            route=call.route,
            target=call.target,
            method=call.request.method,
            raw_target=call.target_bytes,
            status=status,
            body_bytes=body_bytes,
            start=call.start,
            aborted=aborted,
            upstream_error=upstream_error,
        )

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


async def _write(call: _Call, response: web.StreamResponse) -> None:
    # Written here rather than by aiohttp once the handler has returned, so
    # the access log and metrics get the body bytes sent and the whole
    # duration; aiohttp's own prepare/write_eof then find the answer done.
    call.count_body()
    try:
        await response.prepare(call.request)
        await response.write_eof()
    except ConnectionResetError:
        call.aborted = "client"


def route_timeout(route: Route | None, upstream: Upstream) -> aiohttp.ClientTimeout | None:
    if route is None:
        return None
    overrides = route.timeouts
    if overrides.connect is None and overrides.read is None:
        return None
    connect = overrides.connect or upstream.connect_timeout
    return aiohttp.ClientTimeout(
        total=None,
        connect=connect,
        sock_connect=connect,
        sock_read=overrides.read or upstream.read_timeout,
    )
