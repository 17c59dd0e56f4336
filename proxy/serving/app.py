"""The proxy application: `create_app`, its AppKey and its lifecycle.

aiohttp's request path is `proxy.webpath.dispatch.WebPath.handle`, one catch-all
route in front of the route table. Resources live in `cleanup_ctx`: the watcher task,
the upstream pools (kept in step with reloads) and the in-process new app,
built once: a reload that would need other code is refused
(`proxy.serving.check.reload_errors`). SIGHUP reloads routes.yaml.

On shutdown (`on_shutdown`, which aiohttp's runner calls after the listening
sockets close and BEFORE it waits for handlers up to the drain timeout) the
proxy turns unready and closes every WebSocket with 1001 (Going Away): the
relayed ones and, through the in-process app's own on_shutdown, the new app's.
Plain requests in flight are left to finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Final

from aiohttp import web
from aiohttp.http import HttpVersion11

from proxy.core.headers import ForwardingPolicy, request_id_from
from proxy.core.state import PROXY, Proxy
from proxy.errors import AppFactoryError
from proxy.routing.model import NEW, Upstream
from proxy.routing.reload import RoutesWatcher
from proxy.serving.check import reload_errors
from proxy.serving.shadowsite import ShadowSite
from proxy.shadow.capture import CaptureWriter
from proxy.shadow.metrics import ShadowMetrics
from proxy.shadow.results import ShadowBook
from proxy.shadow.runtime import ShadowRuntime
from proxy.telemetry.accesslog import AccessLog
from proxy.telemetry.metrics import ProxyMetrics
from proxy.upstream.limits import ClientLimits
from proxy.upstream.pools import UpstreamPools
from proxy.webpath.appfactory import build_new_app
from proxy.webpath.dispatch import WebPath
from proxy.webpath.inprocess import InProcessApp
from proxy.webpath.responses import OwnResponse, error_response
from proxy.webpath.ws_relay import RELAYS, Relays

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable
    from pathlib import Path

    from aiohttp.typedefs import Handler

    from proxy.routing.model import ShadowStore
    from proxy.routing.table import RouteTable

__all__ = ["PROXY", "Proxy", "ServerLimits", "ShadowLimits", "create_app", "server_handler_args"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerLimits:
    """Client-facing limits. Parser limits are at least the legacy club-api's
    (aiohttp defaults); idle keep-alive connections close after
    `keepalive_timeout` seconds (nginx's 75 s; aiohttp's own is an hour)."""

    max_line_size: int = 8190
    max_field_size: int = 8190
    max_headers: int = 128
    keepalive_timeout: float = 75.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ShadowLimits:
    """Per process: copies waiting at most (more are dropped, `queue_full`), copies in
    flight, and the bytes of primary answers held for them (past it: `queue_full`)."""

    queue_size: int = 1024
    workers: int = 16
    max_buffered: int = 64 * 1024 * 1024
    # Copies per second at most (past it: `rate_limited`); 0: no cap.
    rate: float = 200.0


def server_handler_args(limits: ServerLimits) -> dict[str, object]:
    """aiohttp server settings for a pass-through proxy, whatever runner serves the app.

    `auto_decompress=False`: a gzip request body must reach the upstream as
    sent. `handler_cancellation=True`: a client that goes away cancels its
    upstream request at once. aiohttp's own access log is off: ours has the
    route, target and request id.
    """
    return {
        "keepalive_timeout": limits.keepalive_timeout,
        "auto_decompress": False,
        "handler_cancellation": True,
        "access_log": None,
        "max_line_size": limits.max_line_size,
        "max_field_size": limits.max_field_size,
        "max_headers": limits.max_headers,
    }


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: in-process app built, pools, watcher task, app started and SIGHUP."""
    proxy = app[PROXY]
    new_app = _build_new_app(proxy.watcher)
    proxy.pools.sync(_upstreams_of(proxy.watcher.table))
    proxy.watcher.add_listener(lambda _old, new: proxy.pools.sync(_upstreams_of(new)))
    await proxy.watcher.start()
    inprocess = InProcessApp(new_app) if new_app is not None else None
    try:
        if inprocess is not None:
            await inprocess.start()
            proxy.inprocess = inprocess
        try:
            async with _shadow(proxy, inprocess), _serving(proxy):
                yield
        finally:
            if inprocess is not None:
                await inprocess.close()
    finally:
        await proxy.watcher.stop()
        await proxy.pools.close()


async def _going_away(app: web.Application) -> None:
    """on_shutdown: close every WebSocket with 1001 now, so none holds the drain."""
    proxy = app[PROXY]
    proxy.ready = False
    app[RELAYS].going_away()
    if isinstance(proxy.inprocess, InProcessApp):
        await proxy.inprocess.shutdown()


@contextlib.asynccontextmanager
async def _shadow(proxy: Proxy, inprocess: InProcessApp | None) -> AsyncIterator[None]:
    """The shadow runtime, following the table's shadowed routes, and the new app's socket."""
    shadow = proxy.shadow
    if shadow is None:
        yield
        return
    watcher = proxy.watcher
    shadow.book.configure(watcher.table.shadows)
    watcher.add_listener(lambda old, new: _follow_table(shadow, old, new))
    site = ShadowSite(inprocess) if inprocess is not None else None
    await shadow.start()
    if shadow.capture is not None:
        await shadow.capture.start()
    try:
        if site is not None:
            shadow.inprocess_socket = await site.start()
        yield
    finally:
        if site is not None:
            await site.close()
        if shadow.capture is not None:
            await shadow.capture.close()
        await shadow.close()


def _store(given: ShadowStore | None, in_file: ShadowStore | None) -> ShadowStore | None:
    """The DSN given at start (CLUB_PROXY_SHADOW_DSN) wins; the file's other settings stay."""
    if given is None or in_file is None:
        return given or in_file
    return dataclasses.replace(in_file, dsn=given.dsn)


def _shadow_runtime(
    proxy: Proxy, store: ShadowStore | None, limits: ShadowLimits | None
) -> ShadowRuntime:
    limits = limits or ShadowLimits()
    book = ShadowBook(store=store)
    runtime = ShadowRuntime(
        book,
        queue_size=limits.queue_size,
        workers=limits.workers,
        max_buffered=limits.max_buffered,
        rate=limits.rate,
    )
    runtime.capture = CaptureWriter()
    runtime.metrics = ShadowMetrics(
        proxy.metrics.registry, book, runtime.queue.qsize, runtime.capture.counts
    )
    return runtime


def _follow_table(shadow: ShadowRuntime, old: RouteTable, new: RouteTable) -> None:
    shadow.book.configure(new.shadows)
    if new.shadow_store != old.shadow_store:
        # The store is opened once, at start (its pool, its migrations).
        logger.warning("proxy.shadow_store_changed", extra={"applies": "at the next restart"})


@contextlib.asynccontextmanager
async def _serving(proxy: Proxy) -> AsyncIterator[None]:
    """Ready, with SIGHUP reloading, until the app stops."""
    loop = asyncio.get_running_loop()
    try:
        if proxy.reload_on_sighup:
            loop.add_signal_handler(signal.SIGHUP, _on_sighup, proxy.watcher)
        proxy.ready = True
        yield
    finally:
        proxy.ready = False
        if proxy.reload_on_sighup:
            loop.remove_signal_handler(signal.SIGHUP)


def _build_new_app(watcher: RoutesWatcher) -> web.Application | None:
    """The in-process app the active table names (None: none); reloads are held to it.

    An app that cannot be built while no route uses `new` is a warning, as
    in `club-proxy check`: the proxy serves, and a reload that routes to
    `new` is refused until a restart can build it.
    """
    table = watcher.table
    running = table.new if table.new is not None and table.new.app is not None else None
    new_app: web.Application | None = None
    if running is not None:
        try:
            new_app = build_new_app(running)
        except AppFactoryError as exc:
            if table.uses_new:
                raise
            logger.warning(
                "proxy.new_app_unavailable", extra={"app": running.app, "error": str(exc)}
            )
    watcher.validator = partial(reload_errors, running=running, app=new_app)
    return new_app


def _on_sighup(watcher: RoutesWatcher) -> None:
    result = watcher.reload()
    logger.info("proxy.sighup_reload", extra={"ok": result.ok, "digest": result.digest})


def _upstreams_of(table: RouteTable) -> Iterable[Upstream]:
    yield from table.upstreams.values()
    if table.new is not None and table.new.url is not None:
        yield Upstream(name=NEW, url=table.new.url)


# What `OPTIONS *` answers: the methods the proxy passes on (CONNECT and TRACE
# are refused).
_ALLOWED: Final = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"


@web.middleware
async def _non_origin_targets(request: web.Request, handler: Handler) -> web.StreamResponse:
    # The catch-all route matches every origin-form target; what reaches the
    # router's 404/405 is CONNECT's authority-form or OPTIONS's asterisk-form.
    if request.match_info.http_exception is None:
        return await handler(request)
    rid = request_id_from(request.headers.get("X-Request-ID"))
    if request.method == "OPTIONS" and request.raw_path == "*":
        # RFC 9110 §9.3.7: a question about the server, answered by it.
        answer = OwnResponse(status=200, headers={"Allow": _ALLOWED, "X-Request-ID": rid})
        _record_own(request, rid, answer.status, 0)
        return answer
    if request.method == "CONNECT":
        response = error_response(405, "method not allowed", request_id=rid, kind="method")
    else:
        response = error_response(400, "unsupported request target", request_id=rid, kind="target")
    _record_own(request, rid, response.status, response.body_size)
    return response


async def _expect(request: web.Request) -> web.StreamResponse | None:
    """`Expect: 100-continue` answered as aiohttp does; any other expectation a JSON 417.

    aiohttp's own 417 is text with its `Server` header (the version leak the
    probe found). Like aiohttp, an HTTP/1.0 request's `Expect` is ignored.
    """
    if request.version != HttpVersion11:
        return None
    if request.headers.get("Expect", "").lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the answer's own bytes start after it
        return None
    rid = request_id_from(request.headers.get("X-Request-ID"))
    response = error_response(417, "expectation failed", request_id=rid, kind="expect")
    response.force_close()  # its body, if any, is never read
    _record_own(request, rid, response.status, response.body_size)
    return response


def _record_own(request: web.Request, request_id: str, status: int, body_bytes: int) -> None:
    request.app[PROXY].record_rejected(
        request_id=request_id,
        status=status,
        body_bytes=body_bytes,
        method=request.method,
        raw_target=request.raw_path,
    )


def create_app(
    *,
    routes_path: Path,
    trusted_proxies: Iterable[str] = (),
    pseudonym: str = "club-proxy",
    underscores_in_headers: bool = False,
    poll_interval: float = 0.5,
    reload_on_sighup: bool = True,
    server_limits: ServerLimits | None = None,
    client_limits: ClientLimits | None = None,
    metrics: ProxyMetrics | None = None,
    access_log: AccessLog | None = None,
    fast_lane: bool = True,
    shadow_store: ShadowStore | None = None,
    shadow: ShadowLimits | None = None,
) -> web.Application:
    """The proxy application for `routes_path` (RoutesError now if the file is invalid).

    `trusted_proxies` are the CIDRs whose X-Forwarded-* headers are kept;
    `pseudonym` is this proxy's name in `Via`; `underscores_in_headers` keeps
    request header names with `_` (dropped otherwise, as nginx does). `access_log` defaults to lines
    on the `proxy.access` logger; `club-proxy run` passes a buffered stdout one.
    `fast_lane=False` sends every request through aiohttp's web layer even
    when `ProxyAppRunner` serves the app (see `proxy.fastlane.lane`).
    `shadow_store` (else routes.yaml's `shadow_store:`) keeps shadow results
    in PostgreSQL; without either they stay in this process's memory.
    """
    watcher = RoutesWatcher(routes_path, poll_interval=poll_interval)
    proxy = Proxy(
        watcher=watcher,
        policy=ForwardingPolicy.from_cidrs(
            trusted_proxies, pseudonym=pseudonym, underscores_in_headers=underscores_in_headers
        ),
        metrics=metrics or ProxyMetrics(),
        access=access_log or AccessLog(),
        pools=UpstreamPools(limits=client_limits or ClientLimits()),
        reload_on_sighup=reload_on_sighup,
        fast_lane=fast_lane,
    )
    proxy.metrics.watch_reloads(watcher)
    proxy.metrics.watch_pools(proxy.pools)
    proxy.shadow = _shadow_runtime(proxy, _store(shadow_store, watcher.table.shadow_store), shadow)
    app = web.Application(
        handler_args=server_handler_args(server_limits or ServerLimits()),
        middlewares=[_non_origin_targets],
    )
    app[PROXY] = proxy
    app[RELAYS] = Relays()
    app.router.add_route("*", "/{tail:.*}", WebPath(proxy).handle, expect_handler=_expect)
    app.cleanup_ctx.append(_lifecycle)
    app.on_shutdown.append(_going_away)
    return app
