"""Serve `to: new` requests from the new aiohttp Application inside the proxy process.

aiohttp has no public API for handing a request to another Application, so this
module leans on two private-but-stable pieces of aiohttp 3.x, both pinned by
tests/proxy/test_inprocess.py so an upgrade that changes them fails loudly:

- `Request.clone()` (public) gives a request that shares the connection, the
  payload stream and the writer but has no resolved route yet;
- `Application._handle(request)` (private) is exactly what aiohttp's own server
  calls per request: resolve the route in the app's router, attach the app to
  `request.match_info` (so `request.app` is the NEW app and its AppKeys work),
  run its middlewares, call the handler.

Lifecycle mirrors `web.AppRunner`: freeze on_startup, run startup (which enters
the app's cleanup_ctx), freeze the rest; `shutdown()` runs the app's on_shutdown
(where apps close their WebSockets) and then closes with 1001 any WebSocket of
the app still open, `close()` runs shutdown (if not yet run) and cleanup. The
proxy calls `shutdown()` from its own on_shutdown, before the server waits for
handlers, as aiohttp does for an app it serves itself.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from aiohttp import WSCloseCode, hdrs, web

from proxy.webpath.responses import error_response

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from multidict import CIMultiDict, CIMultiDictProxy

__all__ = ["PREPARED", "InProcessApp", "Prepared"]

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class Prepared:
    """The answer the new app's handler prepared itself (a stream, a WebSocket), once it has."""

    response: web.StreamResponse | None = None


# Left by `InProcessApp.handle` on the proxy's request: what the handler had
# put on the wire even when the handler never returns (it was cancelled).
PREPARED: Final = web.RequestKey("PREPARED", Prepared)


class InProcessApp:
    """The new app, started inside the proxy and called without an HTTP hop.

    `await start()` runs its startup and cleanup_ctx, `await shutdown()` its
    on_shutdown (then closes its open WebSockets with 1001), `await close()` its
    shutdown and cleanup; `cleanup_ctx` does both for the proxy app. `await handle(request)`
    dispatches a proxy request into it: handlers see a normal request (their own
    `match_info`, `request.app`, headers, body), middlewares run, 404/405 and
    other HTTP errors come back as responses, and an exception becomes a 500
    JSON `{"error", "request_id"}`.
    """

    __slots__ = ("_app", "_shut_down", "_started", "_websockets")

    def __init__(self, app: web.Application) -> None:
        self._app = app
        self._started = False
        self._shut_down = False
        # The app's WebSockets in progress: closed with 1001 at shutdown.
        self._websockets: set[web.WebSocketResponse] = set()
        # Also for answers the handler prepares itself (a stream, a WebSocket),
        # which are on the wire before the proxy sees them.
        app.on_response_prepare.append(_echo_request_id)
        app.on_response_prepare.append(self._track_websocket)

    @property
    def app(self) -> web.Application:
        return self._app

    async def start(self) -> None:
        """Run the app's on_startup signal (and so its cleanup_ctx), as AppRunner does."""
        self._app.on_startup.freeze()
        try:
            await self._app.startup()
        except BaseException:
            # Unwind the cleanup_ctx entries that did start.
            await self._app.cleanup()
            raise
        self._app.freeze()
        self._started = True
        self._shut_down = False

    async def shutdown(self) -> None:
        """Run on_shutdown once, then close the app's WebSockets still open with 1001.

        What aiohttp's runner does before it waits for handlers: the app's own
        hooks close its sockets (new_services' hub does); any socket they leave
        open (an app without such a hook) is closed here, so no WebSocket holds
        the proxy's drain.
        """
        if not self._started or self._shut_down:
            return
        self._shut_down = True
        try:
            await self._app.shutdown()
        finally:
            sockets = [ws for ws in self._websockets if not ws.closed]
            await asyncio.gather(
                *(ws.close(code=WSCloseCode.GOING_AWAY) for ws in sockets),
                return_exceptions=True,
            )

    async def close(self) -> None:
        """Run on_shutdown (unless `shutdown()` did), then on_cleanup (cleanup_ctx in reverse)."""
        if not self._started:
            return
        try:
            await self.shutdown()
        finally:
            self._started = False
            await self._app.cleanup()

    async def _track_websocket(self, _request: web.Request, response: web.StreamResponse) -> None:
        if isinstance(response, web.WebSocketResponse):
            self._websockets.add(response)

    async def cleanup_ctx(self, _: web.Application) -> AsyncIterator[None]:
        """For `proxy_app.cleanup_ctx.append(inprocess.cleanup_ctx)`."""
        await self.start()
        try:
            yield
        finally:
            await self.close()

    async def handle(
        self,
        request: web.Request,
        *,
        headers: CIMultiDict[str] | CIMultiDictProxy[str] | None = None,
        request_id: str | None = None,
    ) -> web.StreamResponse:
        """Dispatch `request` into the new app and return its response (not yet prepared).

        `headers` replaces the headers the handler sees (the proxy passes the
        client's headers plus X-Forwarded-*/X-Request-ID); by default it sees
        the client's own. The body is the client's stream, read by the handler.
        """
        if not self._started:
            msg = "InProcessApp.start() has not been awaited"
            raise RuntimeError(msg)
        # Before the clone: the new app's request shares it (`_echo_request_id`).
        request[PREPARED] = Prepared()
        inner = _inner_request(request, headers)
        rid = request_id or inner.headers.get("X-Request-ID") or uuid.uuid4().hex
        try:
            response = await self._app._handle(inner)  # noqa: SLF001 - see module docstring
        except web.HTTPException as exc:
            response = _as_response(exc)
        except Exception:
            logger.exception("proxy.new_handler_error", extra={"request_id": rid})
            if request.writer.output_size:
                raise  # the handler had started its answer: only aborting is honest
            return error_response(500, "new handler failed", request_id=rid, kind="new_handler")
        finally:
            # A WebSocket's handler returns when it is over.
            prepared = request[PREPARED].response
            if isinstance(prepared, web.WebSocketResponse):
                self._websockets.discard(prepared)
        if not response.prepared:
            await _run_prepare_hooks(inner, response)
        return response


async def _echo_request_id(request: web.Request, response: web.StreamResponse) -> None:
    # The proxy put its request id in the request the new app sees.
    rid = request.headers.get("X-Request-ID")
    if rid is not None:
        response.headers["X-Request-ID"] = rid
    prepared = request.get(PREPARED)
    if prepared is not None:
        prepared.response = response


def _inner_request(
    request: web.Request, headers: CIMultiDict[str] | CIMultiDictProxy[str] | None
) -> web.Request:
    # The proxy's own server already answered `Expect: 100-continue` before
    # routing; the new app would send a second "100 Continue" on the same wire.
    if headers is None and hdrs.EXPECT not in request.headers:
        return request.clone()
    source = request.headers if headers is None else headers
    return request.clone(headers=[(k, v) for k, v in source.items() if k.lower() != "expect"])


def _as_response(exc: web.HTTPException) -> web.Response:
    # Raised HTTP errors (router 404/405, a handler's HTTPFound...) are
    # answers; returning the exception object itself is deprecated in aiohttp.
    response = web.Response(status=exc.status, reason=exc.reason, body=exc.body)
    for name, value in exc.headers.items():
        if name != hdrs.CONTENT_LENGTH:
            response.headers.add(name, value)
    return response


async def _run_prepare_hooks(request: web.Request, response: web.StreamResponse) -> None:
    # The proxy prepares the response with ITS request, which runs only the
    # proxy's on_response_prepare; the new app's hooks run here, first.
    for app in request.match_info.apps:
        await app.on_response_prepare.send(request, response)
