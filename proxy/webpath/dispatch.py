"""aiohttp's web path: one catch-all handler in front of the route table.

Requests the fast lane does not relay (bodies, upgrades, in-process `new`,
HTTP/1.0, anything unusual; every request with `--no-fast-lane` or another
runner) come here. Each request is decided once (`proxy.core.decision`; a
request the lane handed over keeps the lane's decision) and keeps its table
to its end, so a reload never changes a request in flight. The decision names
a target: an HTTP upstream (streamed by `proxy.webpath.relay`, or relayed by
`proxy.webpath.websocket` for an upgrade) or `new`, answered in-process by
the new application without an HTTP hop (or forwarded when `new` is a URL).
Every request ends with one access line and its metrics (`Proxy.record`).
"""

from __future__ import annotations

from dataclasses import dataclass
from time import perf_counter
from typing import TYPE_CHECKING, Final

from aiohttp import WSCloseCode, web
from multidict import CIMultiDict
from yarl import URL

from proxy.core.decision import decide, exposes_target, take_decision
from proxy.core.headers import TARGET_HEADER, request_id_from, upstream_request_headers
from proxy.core.send_deadline import set_send_timeout
from proxy.core.state import CLIENT_CLOSED
from proxy.routing.model import NEW, Upstream
from proxy.upstream.limits import route_timeout, send_timeout
from proxy.webpath.inprocess import PREPARED
from proxy.webpath.relay import forward
from proxy.webpath.responses import (
    BodyCounter,
    ErrorResponse,
    PassThroughResponse,
    count_body,
    error_response,
    refusal,
)
from proxy.webpath.websocket import is_websocket_upgrade, relay_websocket

if TYPE_CHECKING:
    import aiohttp

    from proxy.core.decision import Decision
    from proxy.core.state import InProcessHandler, Proxy
    from proxy.routing.model import NewTarget, Route
    from proxy.routing.table import RouteTable
    from proxy.shadow.tap import PrimaryTap

__all__ = ["WebPath"]

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
    sent: BodyCounter | None = None
    aborted: str | None = None
    # A copy of the answer for the route's shadow or capture (only on such a route).
    tap: PrimaryTap | None = None
    # `X-Club-Target`'s value when the answer shows it (`expose_target:`).
    shown: str | None = None

    def count_body(self) -> None:
        """Count the body bytes aiohttp writes for this request from now on."""
        if self.sent is None:
            self.sent = count_body(self.request)


class WebPath:
    """The catch-all handler of the proxy app (`app.router`'s only route)."""

    __slots__ = ("_new_target", "_new_upstream", "proxy")

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        # The `new` target as an upstream when routes.yaml gives it a URL.
        self._new_target: NewTarget | None = None
        self._new_upstream: Upstream | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """The catch-all handler."""
        target_bytes = request.raw_path
        if target_bytes[:1] != "/":
            # absolute-form (RFC 9112 §3.2.2): forward its origin-form, bytes
            # kept, with the target's authority as Host.
            target_bytes = request.rel_url.raw_path_qs
            request = _with_target_host(request)
        proxy = self.proxy
        method = request.method
        decision = take_decision(request.protocol, method, target_bytes)
        if decision is None:
            table = proxy.watcher.table
            match = table.match(method, target_bytes.partition("?")[0])
            decision = decide(table, match, request.headers, request, proxy.policy, request.remote)
        route = decision.route
        upstream = decision.table.upstreams.get(decision.target)
        set_send_timeout(request.protocol, send_timeout(route, upstream))
        call = _Call(
            request=request,
            rid=request_id_from(request.headers.get("X-Request-ID")),
            table=decision.table,
            route=decision.route,
            target=decision.target,
            target_bytes=target_bytes,
            start=perf_counter(),
        )
        if exposes_target(decision):
            call.shown = decision.target
        if route is not None and route.tapped and proxy.shadow is not None:
            call.tap = self._tap(call, decision)
        response: web.StreamResponse | None = None
        proxy.metrics.in_flight += 1
        try:
            response = refusal(request, proxy.policy, call.rid) or await self._dispatch(call)
            if type(response) is not PassThroughResponse:
                await _write(call, response)
            return response
        finally:
            proxy.metrics.in_flight -= 1
            if call.tap is not None:
                _finish_tap(call, response)
            self._record(call, response)

    async def _dispatch(self, call: _Call) -> web.StreamResponse:
        proxy = self.proxy
        if call.target == NEW:
            if proxy.inprocess is not None:
                return await self._in_process(proxy.inprocess, call)
            upstream = self._new_as_upstream(call.table)
            if upstream is None:
                error = "new target not configured"
                return error_response(500, error, request_id=call.rid, kind="config")
        else:
            upstream = call.table.upstreams[call.target]
        pool = proxy.pools.acquire(upstream)
        try:
            request = call.request
            if "Upgrade" in request.headers and is_websocket_upgrade(request):
                return await self._websocket(call, pool.session, pool.base, upstream)
            return await forward(
                request,
                call.target_bytes,
                pool=pool,
                policy=proxy.policy,
                request_id=call.rid,
                client_timeout=route_timeout(call.route, upstream),
                route=call.route,
                tap=call.tap,
                shown=call.shown,
            )
        finally:
            proxy.pools.release(pool)

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

    async def _in_process(self, inprocess: InProcessHandler, call: _Call) -> web.StreamResponse:
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
            if call.shown is not None:
                response.headers[TARGET_HEADER] = call.shown
        return response

    def _tap(self, call: _Call, decision: Decision) -> PrimaryTap | None:
        """The route's shadow or capture: a tap on this request's answer, or None."""
        shadow = self.proxy.shadow
        route = call.route
        if shadow is None or route is None:
            return None
        request = call.request
        tap = shadow.begin(
            call.table,
            route,
            call.target,
            decision.shadow,
            decision.capture,
            method=request.method,
            target=call.target_bytes,
            headers=lambda: self._upstream_headers(call).items(),
            upgrade="Upgrade" in request.headers and is_websocket_upgrade(request),
        )
        if tap is not None and request.body_exists:
            tap.request_body = None  # unknown until the relay has read it whole
        return tap

    def _upstream_headers(self, call: _Call) -> CIMultiDict[str]:
        # What an upstream would see: cleaned headers plus the gateway's own.
        request = call.request
        return upstream_request_headers(
            request.headers,
            policy=self.proxy.policy,
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
        if response is None:
            response = _closed_websocket(call.request)
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
        self.proxy.record(
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


def _with_target_host(request: web.Request) -> web.Request:
    """`request` with `Host` set to its absolute-form target's authority.

    RFC 9112 §3.2.2: the received Host is ignored for such a request. A target
    with user info is refused with the rest of the bad hosts (`refusal`).
    """
    target = URL(request.raw_path, encoded=True)
    authority = target.host_port_subcomponent
    if authority is None:
        return request
    if target.raw_user is not None:
        authority = f"{target.raw_user}@{authority}"  # not one host: a 400
    headers = CIMultiDict(request.headers)
    headers["Host"] = authority
    return request.clone(headers=headers)


def _closed_websocket(request: web.Request) -> web.WebSocketResponse | None:
    """The in-process WebSocket of a handler cancelled after its close handshake, if any.

    The close handshake ends the connection, which cancels a handler still
    cleaning up (`handler_cancellation`): the WebSocket ended normally, a 101.
    A client that vanished leaves the socket without a close code, or 1006.
    """
    prepared = request.get(PREPARED)
    ws = prepared.response if prepared is not None else None
    if (
        isinstance(ws, web.WebSocketResponse)
        and ws.closed
        and ws.close_code not in {None, WSCloseCode.ABNORMAL_CLOSURE}
    ):
        return ws
    return None


def _finish_tap(call: _Call, response: web.StreamResponse | None) -> None:
    """Tell the tap the answer is over; an in-process answer is copied here, whole."""
    tap = call.tap
    if tap is None:
        return
    if type(response) is PassThroughResponse:
        tap.finished(complete=response.aborted is None)
        return
    body = getattr(response, "body", None)
    if (
        call.target == NEW
        and response is not None
        and call.aborted is None
        and type(response) is not ErrorResponse
        and isinstance(body, bytes)
    ):
        # The in-process app's answer (a reverse shadow): its body is at
        # hand; an answer the handler streamed itself is not (primary_error).
        tap.started(response.status, response.headers.items())
        tap.feed(body)
        tap.finished(complete=True)
        return
    tap.finished(complete=False)


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
    if type(response) is ErrorResponse and response.abandon_connection:
        call.request.protocol.force_close()
