"""The fast lane: plain requests relayed below aiohttp's web layer.

Most proxied traffic is bodiless requests (GET, HEAD) on keep-alive HTTP/1.1
connections to an HTTP upstream. For those, aiohttp's web layer (a Request
object, the per-connection task woken per message, the router, middlewares,
a StreamResponse with its header multidicts and payload writer) costs more
CPU than the relay itself: it capped the proxy at a quarter of nginx's
requests/s on small answers (bench/RESULTS.md).

Every client connection of `club-proxy run` starts in a `FastLane`. It parses
request heads with aiohttp's own C parser (llhttp, the same limits) and relays
a request that qualifies (`_handoff_reason`) with the same route table, header
rules (`proxy.core.headers`), upstream pools, failure mapping, metrics and access
line as the aiohttp path (`proxy.webpath.dispatch`). The first request that does not
qualify (a body, an upgrade, `Expect`, HTTP/1.0, `Connection: close`, a `new`
or cookie-sticky canary route, anything the parser rejects, pipelined bytes)
hands the connection over, from that request's first byte, to aiohttp's
`RequestHandler` (`proxy.serving.protocol.ProxyRequestHandler`), which keeps it for
the rest of its life. So everything unusual stays on the path the
transparency suite was written against; the fast lane only has to be exact for
the common case. tests/proxy/test_fastlane_parity.py holds it to the aiohttp
path's bytes, tests/proxy/test_fastlane.py to its behaviour.

A method llhttp does not know (`BREW`: its method list is fixed) fails the
lane's parser; when it is one nginx would pass (capital letters, `_`, `-`),
the connection goes to a handler on aiohttp's pure-Python parser, which
takes any method token (`proxy.serving.protocol.ExtensionMethodParser`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from types import MappingProxyType
from typing import TYPE_CHECKING, Final, cast

from aiohttp.http import HttpVersion11
from aiohttp.http_exceptions import BadHttpMethod, BadStatusLine
from aiohttp.http_parser import HttpRequestParser
from aiohttp.streams import EMPTY_PAYLOAD

from proxy.core.answers import REFUSED_METHODS
from proxy.core.decision import PendingDecision, decide
from proxy.core.headers import valid_host
from proxy.core.request_ids import request_id_from
from proxy.core.send_deadline import SendDeadline
from proxy.fastlane.answer import error_answer
from proxy.fastlane.call import LaneCall
from proxy.routing.model import NEW, StickyKind

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from aiohttp.http import RawRequestMessage

    from proxy.core.state import Proxy

__all__ = ["MAX_BLANK_BYTES", "FastLane", "LaneHost"]

logger = logging.getLogger(__name__)

# aiohttp's StreamReader limit for the bodies the fast lane never reads (it
# hands such requests over before reading them).
_READ_LIMIT: Final = 1 << 16
_HEAD_END: Final = b"\r\n\r\n"
# Empty-line bytes (CR, LF) allowed between two requests: nginx's
# client_header_buffer_size, 1 KiB. More is answered 400 and closed.
MAX_BLANK_BYTES: Final = 1024
_BLANK: Final = b"\r\n"
# nginx's method rule (capital letters, `_`, `-`), at the start of a request.
EXTENSION_METHOD: Final = re.compile(rb"[A-Z_-]{1,32} ")


class _NoCookies:
    """The lane's cookie source: it decides no cookie-sticky canary route (hands those over)."""

    __slots__ = ()
    cookies: Final[Mapping[str, str]] = MappingProxyType({})


_NO_COOKIES: Final = _NoCookies()


class LaneHost:
    """What the fast lanes of one listening server share (`proxy.serving.protocol.ProxyServer`).

    `handoff` builds the aiohttp connection handler a lane hands over to
    (given the decision the lane made for the request it hands over, if it
    made one), `handoff_extension` one whose parser takes methods llhttp does
    not know;
    `lanes` are the live fast-lane connections, for graceful shutdown.
    Hand-overs are counted by reason in `ProxyMetrics.fast_lane_handoff`.
    """

    def __init__(
        self,
        proxy: Proxy,
        *,
        handoff: Callable[[PendingDecision | None], asyncio.Protocol],
        handoff_extension: Callable[[], asyncio.Protocol],
        parser_limits: dict[str, int],
        keepalive_timeout: float,
    ) -> None:
        self.proxy = proxy
        self.handoff = handoff
        self.handoff_extension = handoff_extension
        self.parser_limits = parser_limits
        self.keepalive_timeout = keepalive_timeout
        self.lanes: set[FastLane] = set()
        # Host values seen valid: a proxy sees a handful, and a set lookup is a
        # fraction of the regular expression's cost on every request. Bounded
        # (`_GOOD_HOSTS_MAX`): Host values are the client's to choose.
        self.good_hosts: set[str] = set()

    def close_all(self) -> None:
        """Stop reading new requests: idle lanes close now, busy ones after their answer."""
        for lane in list(self.lanes):
            lane.close()

    async def shutdown(self, timeout: float | None) -> None:  # noqa: ASYNC109 - aiohttp's Server.shutdown
        """Let answers in flight finish (up to `timeout`), then close every lane."""
        await asyncio.gather(*(lane.shutdown(timeout) for lane in list(self.lanes)))


class FastLane(asyncio.Protocol):
    """One client connection, relayed here until a request needs aiohttp."""

    def __init__(self, host: LaneHost) -> None:
        self._host = host
        self._proxy = host.proxy
        self.loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._parser: HttpRequestParser | None = None
        self.peer: str | None = None
        self.scheme = "http"
        # Bytes since the last answered request: the head being read when
        # idle, or what arrived during an answer (not yet parsed).
        self._raw: bytes | bytearray = b""
        # Empty-line bytes since the last request line (`_skip_blank_lines`).
        self._blank = 0
        self._call: LaneCall | None = None
        # Set when the lane decided a request it then hands over (`to: new`).
        self._decision: PendingDecision | None = None
        self._reading_paused = False
        self.writing_paused = False
        self._drain: asyncio.Future[None] | None = None
        # Set by shutdown(), resolved when the request in flight is done.
        self._idle: asyncio.Future[None] | None = None
        self._closing = False
        self._idle_since = 0.0
        self._keepalive: asyncio.TimerHandle | None = None
        # Cuts a client that leaves an answer unread (nginx's send_timeout).
        self.send_deadline = SendDeadline()

    # --- asyncio.Protocol -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's is not an asyncio.Transport subclass).
        transport = cast("asyncio.Transport", transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else None
        if transport.get_extra_info("sslcontext") is not None:
            self.scheme = "https"
        self._parser = HttpRequestParser(
            # Only its pause/resume_reading hooks are called, by a body's reader.
            self,  # type: ignore[arg-type]
            self.loop,
            _READ_LIMIT,
            auto_decompress=False,
            **self._host.parser_limits,  # type: ignore[arg-type]
        )
        self._host.lanes.add(self)
        self._rest()

    def data_received(self, data: bytes) -> None:
        if self._call is not None:
            # The client sent more during an answer (pipelining): hold it,
            # read no further, and look at it once the answer is out.
            self._raw += data
            self._pause_reading()
            return
        self._on_bytes(data)

    def connection_lost(self, exc: BaseException | None) -> None:  # noqa: ARG002
        self.send_deadline.resumed()
        self._host.lanes.discard(self)
        self._transport = None
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None
        if self._call is not None:
            # The client went away: drop its upstream request (closing that
            # connection), as aiohttp's handler_cancellation does.
            self._call.client_gone()
        self._wake_writer()

    def pause_writing(self) -> None:
        self.writing_paused = True
        call = self._call
        if call is not None:
            # Read here, not per request: a full socket buffer is the rare case.
            self.send_deadline.seconds = call.send_timeout()
        self.send_deadline.paused(self._transport, self.peer)

    def resume_writing(self) -> None:
        self.send_deadline.resumed()
        self.writing_paused = False
        self._wake_writer()
        if self._call is not None:
            self._call.resume_upstream()

    # The parser's flow-control hooks, for the body of a request the lane
    # hands over without reading: nothing to pause.
    def pause_reading(self) -> None:
        """Not used: the lane reads no request body."""

    def resume_reading(self, resume_parser: bool = True) -> None:  # noqa: FBT001, FBT002
        """Not used: the lane reads no request body."""

    # --- graceful shutdown (LaneHost) ------------------------------------------

    def close(self) -> None:
        """Close now when idle, or once the answer in flight is out."""
        self._closing = True
        if self._call is None and self._transport is not None:
            self._transport.close()

    async def shutdown(self, timeout: float | None) -> None:  # noqa: ASYNC109 - as RequestHandler.shutdown
        """Close after the answer in flight, waiting for it up to `timeout`."""
        self.close()
        if self._call is not None:
            self._idle = idle = self.loop.create_future()
            await asyncio.wait({idle}, timeout=timeout)
            call = self._call
            if call is not None:
                call.client_gone()  # out of time: cut it, as aiohttp does
                if call.task is not None:
                    # Its failure, if any, was logged by LaneCall._settle.
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await call.task
        if self._transport is not None:
            self._transport.close()

    # --- requests ---------------------------------------------------------------

    def _on_bytes(self, data: bytes) -> None:  # noqa: C901 - the common case inline, no call
        parser = self._parser
        if parser is None:
            return  # handed over or closed already
        raw: bytes | bytearray = self._raw
        if raw:
            raw = self._append(raw, data)
        else:
            # The common case, a whole head in one read: no copy, no call.
            if data[:1] in _BLANK:
                data = self._skip_blank_lines(data)
                if not data:
                    return
            raw = self._raw = data
        try:
            messages, upgraded, _ = parser.feed_data(data)
        except (BadHttpMethod, BadStatusLine):
            # llhttp's answer to a method it does not know (BadStatusLine for
            # RTSP's, which it expects with RTSP/1.0), but also to a bad
            # version after a method it knows: that stays a 400 of its own.
            self._hand_off("extension" if self._unknown_method(raw) else "malformed")
            return
        except Exception:  # aiohttp's handler answers it (400) and logs it
            self._hand_off("malformed")
            return
        if not messages:
            if upgraded:
                self._hand_off("upgrade")
            return  # the head is not complete yet; the parser bounds its size
        message, payload = messages[0]
        if len(messages) > 1 or payload is not EMPTY_PAYLOAD or not raw.endswith(_HEAD_END):
            # A body, or a second request already behind this one.
            self._hand_off("body" if payload is not EMPTY_PAYLOAD else "pipelined")
            return
        reason = self._start(message)
        if reason is not None:
            self._hand_off(reason)

    def _append(self, raw: bytes | bytearray, data: bytes) -> bytearray:
        """The rest of a head that came in pieces, appended in place.

        Never copied whole per read (the parser bounds the head's size).
        """
        buffer = raw if isinstance(raw, bytearray) else bytearray(raw)
        buffer += data
        self._raw = buffer
        return buffer

    def _skip_blank_lines(self, data: bytes) -> bytes:
        """`data` without the empty lines before a request line; b"" once they are too many.

        RFC 9112 §2.2 lets a server ignore empty lines before a request; llhttp
        skips them too, but the lane would keep them. More than
        `MAX_BLANK_BYTES` between two requests is answered 400 and closed.
        """
        stripped = data.lstrip(b"\r\n")
        self._blank += len(data) - len(stripped)
        if self._blank > MAX_BLANK_BYTES:
            self._refuse("too many empty lines before a request")
            return b""
        if stripped:
            self._blank = 0
        return stripped

    def _refuse(self, detail: str) -> None:
        """Answer 400 and close: what came cannot be a request."""
        transport = self._transport
        if transport is None:
            return
        proxy = self._proxy
        rid = request_id_from(None)
        answer = error_answer(400, "bad request", rid, close=True)
        logger.warning(
            "proxy.bad_request",
            extra={"request_id": rid, "status": 400, "peer": self.peer, "detail": detail},
        )
        proxy.record_rejected(
            request_id=rid, status=400, body_bytes=len(answer) - answer.index(b"\r\n\r\n") - 4
        )
        self._parser = None
        self._raw = b""
        transport.write(answer)
        transport.close()

    def _unknown_method(self, raw: bytes | bytearray) -> bool:
        """Whether `raw` starts with a method nginx passes and llhttp does not know."""
        match = EXTENSION_METHOD.match(raw)
        if match is None:
            return False
        probe = HttpRequestParser(
            self,  # type: ignore[arg-type]
            self.loop,
            _READ_LIMIT,
            **self._host.parser_limits,  # type: ignore[arg-type]
        )
        try:
            probe.feed_data(match.group() + b"/ HTTP/1.1\r\nHost: probe\r\n\r\n")
        except (BadHttpMethod, BadStatusLine):
            return True
        return False

    def _start(self, message: RawRequestMessage) -> str | None:
        """Relay `message` (`LaneCall`); or say why aiohttp must answer it."""
        reason = _handoff_reason(message, self._proxy, self._host.good_hosts)
        if reason is not None:
            return reason
        method = message.method
        target = message.path
        proxy = self._proxy
        table = proxy.watcher.table
        match = table.match(method, target.partition("?")[0])
        route = match.route
        if route is not None and (canary := route.canary) is not None:
            sticky = canary.sticky
            if sticky is not None and sticky.kind is StickyKind.COOKIE:
                # Undecided: aiohttp's path reads the cookies and decides.
                return "canary"
        decision = decide(table, match, message.headers, _NO_COOKIES, proxy.policy, self.peer)
        if decision.target == NEW:
            self._decision = PendingDecision(method, target, decision)
            return "new"
        self._raw = b""
        # The keep-alive timer stays armed: firing while busy it does nothing,
        # and call_done() arms it again (one timer per keep-alive period, not
        # one per request).
        call = self._call = LaneCall(
            self,
            proxy,
            message=message,
            route=decision.route,
            target=decision.target,
            upstream=table.upstreams[decision.target],
            decision=decision,
        )
        try:
            call.begin()
        except Exception as exc:  # a bug of ours: cut, log a 500, free what it held
            call.broke(exc)
        return None

    # --- what a LaneCall uses ---------------------------------------------------

    def write(self, data: bytes) -> bool:
        """Write to the client; False when it is gone."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return False
        if data:
            transport.write(data)
        return True

    def abort(self) -> None:
        """Cut the client connection (the upstream died mid-answer).

        Nothing more is read from it: a request the client pipelined behind
        the cut one must never reach the upstream.
        """
        self._closing = True
        if self._transport is not None:
            self._transport.abort()

    async def drained(self) -> None:
        """Until the client's socket takes writes again (or is gone)."""
        if self.writing_paused and self._transport is not None:
            self._drain = self.loop.create_future()
            await self._drain

    def _wake_writer(self) -> None:
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    def call_done(self, call: object) -> None:
        """`call` is answered and logged: close, or read on (what arrived meanwhile first)."""
        if call is not self._call:
            return
        self._call = None
        if self._idle is not None and not self._idle.done():
            self._idle.set_result(None)
        transport = self._transport
        if transport is None:
            return
        if self._closing:
            transport.close()
            return
        pending, self._raw = self._raw, b""
        if self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()
        self._rest()
        if pending:
            # bytes() copies nothing for bytes (what arrives during an answer).
            self._on_bytes(bytes(pending))

    # --- connection state -------------------------------------------------------

    def _pause_reading(self) -> None:
        if not self._reading_paused and self._transport is not None:
            self._reading_paused = True
            self._transport.pause_reading()

    def _rest(self) -> None:
        """Idle from now: close the connection if it stays idle for the keep-alive time."""
        self._idle_since = self.loop.time()
        if self._keepalive is None:
            self._keepalive = self.loop.call_at(
                self._idle_since + self._host.keepalive_timeout, self._check_idle
            )

    def _check_idle(self) -> None:
        self._keepalive = None
        if self._call is not None or self._transport is None:
            return
        deadline = self._idle_since + self._host.keepalive_timeout
        if self.loop.time() >= deadline:
            self._transport.close()
        else:
            self._keepalive = self.loop.call_at(deadline, self._check_idle)

    def _hand_off(self, reason: str) -> None:
        """Give the connection, from the current request's first byte, to aiohttp."""
        transport = self._transport
        if transport is None:
            return
        host = self._host
        host.lanes.discard(self)
        host.proxy.metrics.fast_lane_handoff(reason)
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None
        raw, self._raw = self._raw, b""
        self._transport = None
        self._parser = None
        if reason == "extension":
            handler = host.handoff_extension()
        else:
            handler = host.handoff(self._decision)
            self._decision = None
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if self.writing_paused:
            # The transport told us, not the handler: it will tell the
            # handler when it drains, and aiohttp expects to have been paused.
            handler.pause_writing()
        if raw:
            handler.data_received(bytes(raw))


# How many valid Host values a LaneHost remembers (`LaneHost.good_hosts`).
_GOOD_HOSTS_MAX: Final = 1024


def _good_host(host: str, good_hosts: set[str]) -> bool:
    if not valid_host(host):
        return False
    if len(good_hosts) < _GOOD_HOSTS_MAX:
        good_hosts.add(host)
    return True


def _handoff_reason(  # noqa: PLR0911 - one reason per check
    message: RawRequestMessage, proxy: Proxy, good_hosts: set[str]
) -> str | None:
    """Why aiohttp's path must answer `message`, or None when the lane can."""
    if message.version != HttpVersion11:
        return "http10"
    if message.should_close:
        return "close"
    if message.method in REFUSED_METHODS:
        return "method"
    if message.path[:1] != "/":
        return "target"
    headers = message.headers
    host = headers.get("Host")
    if host is not None and host not in good_hosts and not _good_host(host, good_hosts):
        return "host"  # aiohttp's path answers it 400 (`valid_host`)
    if "Upgrade" in headers or "Expect" in headers:
        return "upgrade" if "Upgrade" in headers else "expect"
    if "Via" in headers and proxy.policy.is_loop(headers):
        return "loop"
    return None
