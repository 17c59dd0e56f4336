"""The proxy application: one catch-all handler in front of the route table.

Each request reads `watcher.table` once and keeps that table to its end, so a
reload never changes a request in flight. The table's match (and canary
choice) names a target: an HTTP upstream (streamed by `proxy.forward`, or
relayed by `proxy.websocket` for an upgrade) or `new`, answered in-process by
the new application without an HTTP hop (or forwarded when `new` is a URL).
Resources live in `cleanup_ctx`: the watcher task, the upstream pools (kept in
step with reloads) and the in-process new app. SIGHUP reloads routes.yaml.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass, field
from time import perf_counter
from typing import TYPE_CHECKING, Final

import aiohttp
from aiohttp import web
from yarl import URL

from proxy.accesslog import AccessLog
from proxy.appfactory import build_new_app
from proxy.canary import choose_target
from proxy.forward import (
    ErrorResponse,
    PassThroughResponse,
    error_response,
    forward,
    refusal,
    strip_server_defaults,
)
from proxy.headers import ForwardingPolicy, request_id_from, upstream_request_headers
from proxy.inprocess import InProcessApp
from proxy.metrics import DEFAULT_ROUTE, ProxyMetrics
from proxy.model import NEW, Upstream
from proxy.reload import RoutesWatcher
from proxy.upstreams import ClientLimits, UpstreamPools
from proxy.websocket import is_websocket_upgrade, relay_websocket

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable
    from pathlib import Path

    from aiohttp.typedefs import Handler

    from proxy.model import NewTarget, Route
    from proxy.routes import RouteTable

__all__ = ["PROXY", "Proxy", "ServerLimits", "create_app", "server_handler_args"]

logger = logging.getLogger(__name__)

# Status logged when the client went away before the answer was complete (nginx's 499).
CLIENT_CLOSED: Final = 499


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerLimits:
    """Client-facing parser limits: at least the legacy club-api's (aiohttp defaults)."""

    max_line_size: int = 8190
    max_field_size: int = 8190
    max_headers: int = 128


def server_handler_args(limits: ServerLimits) -> dict[str, object]:
    """aiohttp server settings for a pass-through proxy, whatever runner serves the app.

    `auto_decompress=False`: a gzip request body must reach the upstream as
    sent. `handler_cancellation=True`: a client that goes away cancels its
    upstream request at once. aiohttp's own access log is off: ours has the
    route, target and request id.
    """
    return {
        "auto_decompress": False,
        "handler_cancellation": True,
        "access_log": None,
        "max_line_size": limits.max_line_size,
        "max_field_size": limits.max_field_size,
        "max_headers": limits.max_headers,
    }


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
    inprocess: InProcessApp | None = None
    ready: bool = False
    # The `new` target as an upstream when routes.yaml gives it a URL.
    _new_target: NewTarget | None = None
    _new_upstream: Upstream | None = None
    _loop: asyncio.AbstractEventLoop | None = field(default=None, repr=False)

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
        self.metrics.in_flight.inc()
        try:
            response = refusal(request, self.policy, call.rid) or await self._dispatch(call)
            if type(response) is not PassThroughResponse:
                await _write(call, response)
            return response
        finally:
            self.metrics.in_flight.dec()
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
                client_timeout=_route_timeout(call.route, upstream),
            )
        finally:
            self.pools.release(pool)

    async def _websocket(
        self, call: _Call, session: aiohttp.ClientSession, base: str, upstream: Upstream
    ) -> web.StreamResponse:
        request = call.request
        headers = upstream_request_headers(
            request.headers,
            policy=self.policy,
            peer=request.remote,
            scheme=request.scheme,
            request_id=call.rid,
        )
        return await relay_websocket(
            request,
            url=URL(base + call.target_bytes, encoded=True),
            headers=headers,
            session=session,
            max_msg_size=upstream.ws_max_message_size,
            connect_timeout=upstream.connect_timeout,
            request_id=call.rid,
        )

    async def _in_process(self, inprocess: InProcessApp, call: _Call) -> web.StreamResponse:
        # The new handler sees what an upstream would: cleaned headers plus
        # X-Forwarded-*, Via and X-Request-ID. InProcessApp turns its errors
        # into answers (500 JSON).
        request = call.request
        headers = upstream_request_headers(
            request.headers,
            policy=self.policy,
            peer=request.remote,
            scheme=request.scheme,
            request_id=call.rid,
        )
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

    def _new_as_upstream(self, table: RouteTable) -> Upstream | None:
        new = table.new
        if new is None or new.url is None:
            return None  # the loader rejects such a table; a bug if seen
        if new is not self._new_target or self._new_upstream is None:
            self._new_target, self._new_upstream = new, Upstream(name=NEW, url=new.url)
        return self._new_upstream

    def _record(self, call: _Call, response: web.StreamResponse | None) -> None:
        seconds = perf_counter() - call.start
        route_id = call.route.id if call.route is not None else DEFAULT_ROUTE
        aborted: str | None = None
        body_bytes = 0
        status = CLIENT_CLOSED
        if type(response) is PassThroughResponse:
            aborted, body_bytes, status = response.aborted, response.body_bytes, response.status
            if aborted == "upstream":
                self.metrics.upstream_error(call.target, "aborted")
        elif response is not None:
            status, aborted = response.status, call.aborted
            body_bytes = call.sent.bytes if call.sent is not None else 0
            if type(response) is ErrorResponse and response.kind in _UPSTREAM_KINDS:
                self.metrics.upstream_error(call.target, response.kind)
        else:
            aborted = "client"
        method = call.request.method
        self.metrics.observe(route_id, call.target, method, status, seconds)
        self.access.log(
            request_id=call.rid,
            route=route_id,
            target=call.target,
            method=method,
            raw_target=call.target_bytes,
            status=status,
            body_bytes=body_bytes,
            seconds=seconds,
            aborted=aborted,
        )

    async def context(self, _app: web.Application) -> AsyncIterator[None]:
        """cleanup_ctx: watcher task, pools, in-process app and SIGHUP, in that order."""
        self._loop = asyncio.get_running_loop()
        table = self.watcher.table
        self.pools.sync(_upstreams_of(table))
        self.watcher.add_listener(lambda _old, new: self.pools.sync(_upstreams_of(new)))
        await self.watcher.start()
        try:
            if table.new is not None and table.new.app is not None:
                self.inprocess = InProcessApp(build_new_app(table.new))
                await self.inprocess.start()
            try:
                self._install_sighup()
                self.ready = True
                yield
            finally:
                self.ready = False
                self._remove_sighup()
                if self.inprocess is not None:
                    await self.inprocess.close()
        finally:
            await self.watcher.stop()
            await self.pools.close()

    def _install_sighup(self) -> None:
        if self.reload_on_sighup and self._loop is not None:
            self._loop.add_signal_handler(signal.SIGHUP, self._on_sighup)

    def _remove_sighup(self) -> None:
        if self.reload_on_sighup and self._loop is not None:
            self._loop.remove_signal_handler(signal.SIGHUP)

    def _on_sighup(self) -> None:
        result = self.watcher.reload()
        logger.info("proxy.sighup_reload", extra={"ok": result.ok, "digest": result.digest})


_UPSTREAM_KINDS: Final = frozenset({"connect", "timeout", "protocol"})

PROXY: Final = web.AppKey("proxy", Proxy)


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


def _upstreams_of(table: RouteTable) -> Iterable[Upstream]:
    yield from table.upstreams.values()
    if table.new is not None and table.new.url is not None:
        yield Upstream(name=NEW, url=table.new.url)


def _route_timeout(route: Route | None, upstream: Upstream) -> aiohttp.ClientTimeout | None:
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


@web.middleware
async def _non_origin_targets(request: web.Request, handler: Handler) -> web.StreamResponse:
    # The catch-all route matches every origin-form target; what reaches the
    # router's 404/405 is CONNECT's authority-form or OPTIONS's asterisk-form.
    if request.match_info.http_exception is None:
        return await handler(request)
    rid = request_id_from(request.headers.get("X-Request-ID"))
    if request.method == "CONNECT":
        return error_response(405, "method not allowed", request_id=rid, kind="method")
    return error_response(400, "unsupported request target", request_id=rid, kind="target")


def create_app(
    *,
    routes_path: Path,
    trusted_proxies: Iterable[str] = (),
    pseudonym: str = "club-proxy",
    poll_interval: float = 0.5,
    reload_on_sighup: bool = True,
    server_limits: ServerLimits | None = None,
    client_limits: ClientLimits | None = None,
    metrics: ProxyMetrics | None = None,
    access_log: AccessLog | None = None,
) -> web.Application:
    """The proxy application for `routes_path` (RoutesError now if the file is invalid).

    `trusted_proxies` are the CIDRs whose X-Forwarded-* headers are kept;
    `pseudonym` is this proxy's name in `Via`. `access_log` defaults to lines
    on the `proxy.access` logger; `club-proxy run` passes a buffered stdout one.
    """
    watcher = RoutesWatcher(routes_path, poll_interval=poll_interval)
    proxy = Proxy(
        watcher=watcher,
        policy=ForwardingPolicy.from_cidrs(trusted_proxies, pseudonym=pseudonym),
        metrics=metrics or ProxyMetrics(),
        access=access_log or AccessLog(),
        pools=UpstreamPools(limits=client_limits or ClientLimits()),
        reload_on_sighup=reload_on_sighup,
    )
    proxy.metrics.watch_reloads(watcher)
    proxy.metrics.watch_pools(proxy.pools)
    app = web.Application(
        handler_args=server_handler_args(server_limits or ServerLimits()),
        middlewares=[_non_origin_targets],
    )
    app[PROXY] = proxy
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    app.on_response_prepare.append(strip_server_defaults)
    app.cleanup_ctx.append(proxy.context)
    return app
