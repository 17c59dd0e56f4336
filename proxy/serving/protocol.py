"""The proxy's client connections: malformed requests answered the proxy's way.

aiohttp answers a request its parser rejects (bad request line, CL+TE, a bad
chunk, an oversized header, NUL in the target...) in
`RequestHandler.handle_error`: a text/plain 400 that quotes the parser's
details, and an ERROR record with a full traceback on `aiohttp.server`, so any
client could fill the error log. No app hook sees these requests (they are
never routed, so neither middlewares nor `on_response_prepare` run), and
aiohttp has no setting for the connection class. The smallest hook is
therefore the one this module takes: a `RequestHandler` subclass overriding
`handle_error`, built by a `Server` subclass, which `ProxyAppRunner` (an
`AppRunner`) puts in place of the server aiohttp built. Everything else
(parsing, the 400 status, closing the connection after the answer) stays
aiohttp's. tests/proxy/test_bad_requests.py pins the hook.
"""

from __future__ import annotations

import asyncio
import logging
import re
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Final, cast

from aiohttp import web
from aiohttp.http_exceptions import BadStatusLine, HttpProcessingError
from aiohttp.http_parser import HttpParser, HttpRequestParserPy
from aiohttp.web_protocol import MAX_MSG_QUEUE_SIZE, RequestPayloadError

from proxy.core.headers import request_id_from
from proxy.core.send_deadline import SendDeadline
from proxy.core.state import PROXY
from proxy.fastlane.lane import FastLane, LaneHost
from proxy.webpath.responses import error_response

if TYPE_CHECKING:
    from aiohttp.http import RawRequestMessage
    from aiohttp.web_request import BaseRequest

    from proxy.core.decision import PendingDecision
    from proxy.core.state import Proxy

__all__ = [
    "DeclinedUpgradeGuard",
    "ExtensionMethodParser",
    "ProxyAppRunner",
    "ProxyRequestHandler",
    "ProxyServer",
]

logger = logging.getLogger(__name__)

# Parser messages quote client bytes: enough to diagnose, not a log filler.
_DETAIL_LIMIT: Final = 200
_EXTENSION_REQUEST_LINE: Final = re.compile(rb"[A-Z_-]{1,32} /[\x21-\x7e]* HTTP/1\.[01]")
# aiohttp's RequestHandler defaults, for a server that sets none.
_AIOHTTP_LIMIT: Final = 8190
_AIOHTTP_MAX_HEADERS: Final = 128


class ExtensionMethodParser(HttpRequestParserPy):
    """aiohttp's pure-Python request parser, for methods llhttp does not know.

    llhttp (aiohttp's C parser) has a fixed method list, where nginx passes
    any method of capital letters, `_` and `-`; so does this parser (any
    token, by RFC 9110), with the same framing rules (aiohttp runs one test
    suite against both). It still refuses what nginx refuses: a lower-case
    method, which it would otherwise upper-case, changing the request.
    """

    def parse_message(self, lines: list[bytes]) -> RawRequestMessage:
        # The request line as llhttp would take it, and no more: an origin-form
        # target of visible ASCII (the Python parser would take other bytes,
        # which nothing downstream expects) and HTTP/1.0 or 1.1.
        if _EXTENSION_REQUEST_LINE.fullmatch(lines[0]) is None:
            raise BadStatusLine(lines[0][:_DETAIL_LIMIT].decode("ascii", "replace"))
        return super().parse_message(lines)


class DeclinedUpgradeGuard:
    """aiohttp's C parser, made safe after an Upgrade the proxy does not perform.

    llhttp pauses after a request that asks for an upgrade; for any upgrade
    but WebSocket, aiohttp 3.14's parser resumes and returns that request but
    silently drops the rest of the bytes it was fed (aio-libs/aiohttp#12734),
    and parses the next read as a fresh request. A pipelined request is lost,
    and the body of a request whose head was dropped is read as a request of
    its own (smuggling). The guard ends the connection there: the upgrade
    request is answered as a plain request with `Connection: close`, and
    nothing after it is parsed. WebSocket upgrades pass untouched.
    """

    __slots__ = ("_ended", "_parser")

    def __init__(self, parser: HttpParser[Any]) -> None:
        self._parser = parser
        self._ended = False

    def feed_data(self, data: bytes) -> tuple[Any, bool, bytes]:
        """The parser's `feed_data`; nothing once a declined upgrade was read."""
        if self._ended:
            return (), False, b""
        messages, upgraded, tail = self._parser.feed_data(data)
        if upgraded or not messages:
            return messages, upgraded, tail
        # The upgrade request is the last message llhttp returned.
        message, payload = messages[-1]
        if not message.upgrade:
            return messages, upgraded, tail
        self._ended = True
        closing = (message._replace(should_close=True), payload)
        return [*messages[:-1], closing], False, b""

    def message_consumed(self) -> None:
        """The parser's own; called per request (not through `__getattr__`, which is slow)."""
        self._parser.message_consumed()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._parser, name)


class ProxyRequestHandler(web.RequestHandler):
    """aiohttp's connection handler with JSON error answers and one log line each.

    With `extension_methods`, requests are parsed by `ExtensionMethodParser`.
    `pending_decision` is the fast lane's decision for the request it handed
    this connection over with (`proxy.core.decision.take_decision`).
    """

    __slots__ = ("pending_decision", "send_deadline")

    def __init__(
        self, manager: web.Server, *, extension_methods: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(manager, **kwargs)
        self.pending_decision: PendingDecision | None = None
        self.send_deadline = SendDeadline()
        if not extension_methods and self._parser is not None:
            # Python's parser (below) declines an upgrade without losing bytes.
            self._parser = cast("HttpParser[Any]", DeclinedUpgradeGuard(self._parser))
        elif extension_methods:
            # The same arguments as aiohttp's own parser in RequestHandler.__init__.
            self._parser = ExtensionMethodParser(
                self,
                kwargs["loop"],
                self._read_bufsize,
                max_line_size=kwargs.get("max_line_size", _AIOHTTP_LIMIT),
                max_field_size=kwargs.get("max_field_size", _AIOHTTP_LIMIT),
                max_headers=kwargs.get("max_headers", _AIOHTTP_MAX_HEADERS),
                payload_exception=RequestPayloadError,
                auto_decompress=kwargs.get("auto_decompress", True),
                max_msg_queue_size=MAX_MSG_QUEUE_SIZE,
            )

    def pause_writing(self) -> None:
        super().pause_writing()
        self.send_deadline.paused(self.transport, self.remote_address())

    def resume_writing(self) -> None:
        self.send_deadline.resumed()
        super().resume_writing()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.send_deadline.resumed()
        super().connection_lost(exc)

    def remote_address(self) -> object:
        """The client's address, for log lines."""
        transport = self.transport
        return transport.get_extra_info("peername") if transport is not None else None

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,  # noqa: ARG002 - parser detail: logged, never sent
    ) -> web.StreamResponse:
        """A JSON `{"error", "request_id"}` answer that closes the connection.

        4xx (the parser rejected the request) logs one warning without a
        traceback; 5xx (the handler raised or timed out) is a bug of ours and
        logs an error with its traceback.
        """
        if isinstance(exc, HttpProcessingError) and 400 <= exc.code < 500:  # noqa: PLR2004
            # aiohttp gives 400 for every parser error today; a finer code
            # (413, 431) it might give is kept.
            status = exc.code
        rid = request_id_from(request.headers.get("X-Request-ID"))
        data = {"request_id": rid, "status": status, "peer": request.remote}
        if status >= HTTPStatus.INTERNAL_SERVER_ERROR:
            logger.error("proxy.internal_error", exc_info=exc, extra=data)
        else:
            detail = exc.message if isinstance(exc, HttpProcessingError) else repr(exc)
            data["error"] = type(exc).__name__
            data["detail"] = detail[:_DETAIL_LIMIT]
            logger.warning("proxy.bad_request", extra=data)
        if request.writer.output_size > 0:
            # As aiohttp: an answer already started cannot be replaced.
            msg = "Response is sent already, cannot send another response with the error message"
            raise ConnectionError(msg)
        response = error_response(
            status, HTTPStatus(status).phrase.lower(), request_id=rid, kind="bad_request"
        )
        proxy = getattr(self._manager, "proxy", None)
        if proxy is not None and status < HTTPStatus.INTERNAL_SERVER_ERROR:
            # A 5xx here is a routed request, recorded by the proxy's handler.
            proxy.record_rejected(request_id=rid, status=status, body_bytes=response.body_size)
        # After a framing error the rest of the stream cannot be trusted
        # (smuggling): never read another request from this connection.
        response.force_close()
        return response


class ProxyServer(web.Server):
    """aiohttp's low-level server, making `ProxyRequestHandler` connections.

    With `lanes`, each connection starts in the fast lane (`proxy.fastlane.lane`)
    and moves to a `ProxyRequestHandler` at its first request that needs
    aiohttp; shutdown closes and drains both kinds.
    """

    def __init__(
        self,
        *args: Any,
        lanes: LaneHost | None = None,
        proxy: Proxy | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.lanes = lanes
        # Counts and logs the requests the parser rejects (they reach no handler).
        self.proxy = proxy

    def __call__(self) -> web.RequestHandler | FastLane:  # type: ignore[override]
        if self.lanes is not None:
            return FastLane(self.lanes)
        return self.handler()

    def handler(self, decided: PendingDecision | None = None) -> ProxyRequestHandler:
        """A connection handler of aiohttp's own (the fast lane hands over to it).

        `decided` is the lane's decision for the first request, if it made one.
        """
        handler = ProxyRequestHandler(self, loop=self._loop, **self._kwargs)
        handler.pending_decision = decided
        return handler

    def extension_handler(self) -> ProxyRequestHandler:
        """`handler()` with a parser that takes methods llhttp does not know."""
        return ProxyRequestHandler(self, loop=self._loop, extension_methods=True, **self._kwargs)

    def pre_shutdown(self) -> None:
        super().pre_shutdown()
        if self.lanes is not None:
            self.lanes.close_all()

    async def shutdown(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 - aiohttp's signature
        if self.lanes is None:
            await super().shutdown(timeout)
            return
        await asyncio.gather(super().shutdown(timeout), self.lanes.shutdown(timeout))


class ProxyAppRunner(web.AppRunner):
    """`web.AppRunner` whose connections answer malformed requests the proxy's way.

    `club-proxy run` serves through it; another runner (gunicorn's worker,
    `aiohttp_server`) serves the same app with aiohttp's plain 400s and
    without the fast lane.
    """

    __slots__ = ()

    async def _make_server(self) -> web.Server:
        # aiohttp built its Server from the app (handler args, request
        # factory, loop); the proxy's differs in the connection class and,
        # for the proxy app, the fast lane in front of it.
        server = await super()._make_server()
        kwargs = server._kwargs  # noqa: SLF001 - the handler args, see above
        proxy: Proxy | None = self.app.get(PROXY)
        proxy_server = ProxyServer(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            proxy=proxy,
            **kwargs,
        )
        if proxy is not None and proxy.fast_lane:
            proxy_server.lanes = LaneHost(
                proxy,
                handoff=proxy_server.handler,
                handoff_extension=proxy_server.extension_handler,
                parser_limits={k: kwargs[k] for k in _PARSER_LIMITS if k in kwargs},
                keepalive_timeout=kwargs.get("keepalive_timeout", _AIOHTTP_KEEPALIVE),
            )
        return proxy_server


# The handler args that are also the request parser's limits.
_PARSER_LIMITS: Final = ("max_line_size", "max_field_size", "max_headers")
# aiohttp's RequestHandler default, for an app that sets none.
_AIOHTTP_KEEPALIVE: Final = 3630.0
