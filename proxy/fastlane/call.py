"""One request relayed by the fast lane (`proxy.fastlane.lane`), from head to access line.

The common case runs without a task: an idle pooled connection is taken
(`ConnectionPool.take_idle`), the request head is written, and the answer is
picked up from the connection's `listener` callback; when its body is
already complete (a small answer), head and body go to the client in one write
and the connection goes back to the pool, all within that callback. A task
takes over only when the proxy must wait: for a connection (none idle, or the
pool at its limit), or for the rest of a body. Both ways share the rules of
`proxy.webpath.relay`: 502/504 JSON before the answer started, the client connection
cut when the upstream dies mid-body, the upstream connection closed when the
client leaves, and one retry on a fresh connection for the stale keep-alive
race of an idempotent request.

The module is over the usual size because it is one request's whole life in
the lane: the three ways an answer travels (callback, Content-Length relay,
task) share one completion rule (`_complete`: release, metrics, access line,
exactly once), and splitting them would spread that rule. The bytes it
writes and the task's copy loop live in `proxy.fastlane.answer`.
"""

from __future__ import annotations

import asyncio
import logging
from time import perf_counter
from typing import TYPE_CHECKING

from aiohttp.client_exceptions import ClientOSError, ServerDisconnectedError

from proxy.core.decision import exposes_target
from proxy.core.headers import (
    Framing,
    request_id_from,
    response_head,
    upstream_request_head,
    upstream_request_headers,
)
from proxy.core.state import CLIENT_CLOSED
from proxy.fastlane.answer import copy_body, error_answer, frame, http_date
from proxy.fastlane.plainanswer import plain_answer
from proxy.upstream.client import IDEMPOTENT
from proxy.upstream.exchange import Exchange, is_interim
from proxy.upstream.failures import UPSTREAM_FAILURES, upstream_failure
from proxy.upstream.limits import route_timeout, send_timeout

if TYPE_CHECKING:
    from collections.abc import Coroutine, Iterable
    from typing import Any

    from aiohttp.http import RawRequestMessage, RawResponseMessage
    from aiohttp.streams import StreamReader

    from proxy.core.decision import Decision
    from proxy.core.state import Proxy
    from proxy.fastlane.connection import LaneConnection
    from proxy.routing.model import Route, Upstream
    from proxy.shadow.tap import PrimaryTap
    from proxy.upstream.exchange import ResponseProtocol

__all__ = ["LaneCall"]

logger = logging.getLogger(__name__)


class LaneCall:
    """One bodiless request on its way through a fast lane.

    Created by the lane once the request qualified; `begin()` sends it. The
    lane hears back through `LaneConnection.call_done` exactly once, after the
    access line was written; `client_gone()` is how the lane says its client
    left.
    """

    __slots__ = (
        "_code",
        "_done",
        "_exchange",
        "_lane",
        "_message",
        "_plain",
        "_pool",
        "_proxy",
        "_remaining",
        "_rid",
        "_route",
        "_sent",
        "_shown",
        "_start",
        "_tap",
        "_target",
        "_timeout",
        "_upstream",
        "task",
    )

    def __init__(
        self,
        lane: LaneConnection,
        proxy: Proxy,
        *,
        message: RawRequestMessage,
        route: Route | None,
        target: str,
        upstream: Upstream,
        decision: Decision,
    ) -> None:
        self._lane = lane
        self._proxy = proxy
        self._message = message
        self._route = route
        self._target = target
        self._upstream = upstream
        # `X-Club-Target`'s value when the answer shows it (`expose_target:`).
        self._shown = target.encode() if exposes_target(decision) else None
        self._rid = request_id_from(message.headers.get("X-Request-ID"))
        self._start = perf_counter()
        self._pool = proxy.pools.acquire(upstream)
        self._timeout = route_timeout(route, upstream) or self._pool.timeout
        self._exchange: Exchange | None = None
        self._done = False
        # While a body of known length is relayed past the parser (`_sink_body`).
        self._code = 0
        self._sent = 0
        self._remaining = 0
        # The answer came past aiohttp's parser (`_relay_plain`).
        self._plain = False
        self.task: asyncio.Task[None] | None = None
        # A copy of the answer for the route's shadow or capture; other routes pay this test.
        self._tap: PrimaryTap | None = None
        if route is not None and route.tapped and proxy.shadow is not None:
            self._tap = proxy.shadow.begin(
                decision.table,
                route,
                target,
                decision.shadow,
                decision.capture,
                method=message.method,
                target=message.path,
                headers=self._copy_headers,
            )
        metrics = proxy.metrics
        metrics.in_flight += 1
        metrics.fast_lane_requests += 1

    # --- the lane's side ----------------------------------------------------------

    def send_timeout(self) -> float:
        """How long the client may leave this answer unread (route, else upstream)."""
        return send_timeout(self._route, self._upstream)

    def begin(self) -> None:
        """Send on an idle connection and wait for its callback, or start a task."""
        client = self._pool.client
        proto = client.take_idle()
        if proto is not None:
            exchange = Exchange(client, proto)
            method = self._message.method
            try:
                exchange.send(
                    method,
                    self._upstream_head(),
                    None,
                    chunked=False,
                    read_timeout=self._timeout.sock_read,
                    # A HEAD answer has a length but no body: the parser knows.
                    # A shadowed answer needs its headers parsed for the copy,
                    # one showing `X-Club-Target` its head built by `client_head`.
                    plain=self._on_plain
                    if method != "HEAD" and self._tap is None and self._shown is None
                    else None,
                )
            except ServerDisconnectedError:
                exchange.release(reuse=False)  # lost while idle: connect instead
            except BaseException:
                exchange.release(reuse=False)
                raise
            else:
                self._exchange = exchange
                proto.heads.clear()
                proto.listener = self._on_upstream
                return
        self._spawn(self._relay(may_retry=True))

    def client_gone(self) -> None:
        """The client connection was lost: drop the upstream request."""
        if self.task is not None:
            self.task.cancel()  # its own finally closes and records
            return
        exchange = self._exchange
        if exchange is not None and not self._done:
            exchange.abandon()
            self._complete(CLIENT_CLOSED, self._sent, "client", None)

    def resume_upstream(self) -> None:
        """The client takes writes again: read on from the upstream if we paused it."""
        exchange = self._exchange
        if exchange is not None and exchange.proto.sink is not None:
            exchange.proto.resume_sink()

    # --- without a task -------------------------------------------------------------

    def _on_upstream(self) -> None:
        """The connection's listener: an answer head, a failure, or not yet."""
        try:
            self._on_answer()
        except Exception as exc:
            self.broke(exc)

    def _on_answer(self) -> None:
        exchange = self._exchange
        if exchange is None:
            return
        final = self._final_head(exchange)
        if final is None:
            return
        message, payload = final
        code = message.code
        exchange.message, exchange.content = message, payload
        head, framing = self._response_head(message)
        if framing is Framing.EMPTY:
            sent = self._lane.write(head)
            exchange.finish()
            self._complete(code, 0, None if sent else "client", None)
        elif payload.is_eof() and payload.exception() is None:
            # The whole body is here (a small answer): one write, no task.
            body = payload.read_nowait(-1)
            if self._tap is not None:
                self._tap.feed(body)
            data = head + frame(body, last=True) if framing is Framing.CHUNKED else head + body
            sent = self._lane.write(data)
            exchange.finish()
            self._complete(code, len(body), None if sent else "client", None)
        elif framing is Framing.LENGTH and payload.exception() is None:
            self._sink_body(exchange, head, message, payload)
        else:
            self._spawn(self._stream(exchange, head, framing, code))

    # --- a plain answer, past the parser ------------------------------------------------

    def _on_plain(self, data: bytes) -> bool:
        """The connection's `plain` callback: relay a plain answer, or say it is not one.

        A plain answer goes whole in one write, or its head now and the rest
        of the body through a sink.
        """
        try:
            return self._relay_plain(data)
        except Exception as exc:
            self.broke(exc)
            return True

    def _relay_plain(self, data: bytes) -> bool:
        exchange = self._exchange
        if exchange is None:
            return False
        answer = plain_answer(
            data,
            request_id=self._rid.encode(),
            date=http_date(),
            max_head=self._pool.client.max_plain_head,
        )
        if answer is None or len(data) - answer.body_start > answer.length:
            # Not plain, or bytes past the body (an answer nobody asked for):
            # aiohttp's parser decides, as for any other answer.
            return False
        proto = exchange.proto
        proto.listener = None
        if answer.close:
            proto.force_close()
        self._plain = True
        self._proxy.metrics.fast_lane_plain_answers += 1
        start = answer.body_start
        here = len(data) - start
        self._code = answer.code
        self._sent = here
        self._remaining = answer.length - here
        # One copy of the body bytes, however many there are.
        head = answer.head
        sent = self._lane.write(b"".join((head, memoryview(data)[start:])) if here else head)
        if self._remaining == 0:
            exchange.finish_plain()
            self._complete(self._code, here, None if sent else "client", None)
        elif not sent:
            exchange.release(reuse=False)
            self._complete(self._code, here, "client", None)
        else:
            self._sink_rest(proto)
        return True

    # --- a body of known length, past the parser ---------------------------------------

    def _sink_body(
        self, exchange: Exchange, head: bytes, message: RawResponseMessage, payload: StreamReader
    ) -> None:
        """Relay the rest of a Content-Length body straight from the upstream's reads.

        The parser has the head and the body bytes that came with it; the rest
        goes from each read to the client as it is (`ResponseProtocol.sink`):
        no copy through a StreamReader and no task. When the client's socket
        is full the upstream connection stops reading until it drains.
        """
        try:
            length = int(message.headers["Content-Length"])
        except (KeyError, ValueError):
            self._spawn(self._stream(exchange, head, Framing.LENGTH, message.code))
            return
        first = payload.read_nowait(-1)
        # Reading may let aiohttp's parser go on with bytes it held back
        # (over the reader's limit): take those too.
        while more := payload.read_nowait(-1):
            first += more
        self._code = message.code
        self._sent = len(first)
        self._remaining = length - len(first)
        if self._tap is not None:
            self._tap.feed(first)
        sent = self._lane.write(head + first)
        if payload.is_eof() or self._remaining <= 0:
            # The body was all there after all (an answer over the reader's
            # 128 KiB limit in one read, which the parser held back).
            exchange.finish()
            self._complete(self._code, self._sent, None if sent else "client", None)
            return
        if not sent:
            exchange.release(reuse=False)
            self._complete(self._code, self._sent, "client", None)
            return
        self._sink_rest(exchange.proto)

    def _sink_rest(self, proto: ResponseProtocol) -> None:
        """Take the rest of the body (`_remaining` bytes) from each upstream read."""
        proto.sink = self._on_body
        proto.sink_failed = self._on_body_failed
        if self._lane.writing_paused:
            proto.pause_sink()

    def _on_body(self, data: bytes) -> None:
        try:
            self._relay_body(data)
        except Exception as exc:
            self.broke(exc)

    def _relay_body(self, data: bytes) -> None:
        exchange = self._exchange
        if exchange is None:
            return
        proto = exchange.proto
        remaining = self._remaining
        if len(data) > remaining:
            # Bytes beyond the announced length: relay the answer, never reuse
            # a connection whose stream can no longer be trusted.
            data = data[:remaining]
            proto.force_close()
        self._remaining = remaining - len(data)
        self._sent += len(data)
        if self._tap is not None:
            self._tap.feed(data)
        if not self._lane.write(data):
            exchange.abandon()
            self._complete(self._code, self._sent, "client", None)
        elif self._remaining == 0:
            proto.sink = proto.sink_failed = None
            if self._plain:
                exchange.finish_plain()
            else:
                # The parser never saw these bytes: end its body so the pool
                # sees a finished answer (the next request gets a new parser).
                exchange.content.feed_eof()
                exchange.finish()
            self._complete(self._code, self._sent, None, None)
        elif self._lane.writing_paused:
            proto.pause_sink()

    def _on_body_failed(self, exc: BaseException) -> None:
        """The upstream failed mid-body (timeout, connection lost): cut the client."""
        exchange = self._exchange
        if exchange is None or self._done:
            return
        logger.warning(
            "proxy.upstream_aborted",
            extra={"request_id": self._rid, "sent": self._sent, "error": repr(exc)},
        )
        self._lane.abort()
        exchange.release(reuse=False)
        self._complete(self._code, self._sent, "upstream", "aborted")

    def _final_head(self, exchange: Exchange) -> tuple[RawResponseMessage, StreamReader] | None:
        """The final answer head once it is here; None while waiting or after a failure."""
        proto = exchange.proto
        heads = proto.heads
        for index, answer in enumerate(heads):
            try:
                interim = is_interim(answer[0].code)
            except ServerDisconnectedError as exc:
                self._failed(exchange, exc)
                return None
            if not interim:
                if index + 1 < len(heads):
                    # An answer nobody asked for came with it: relay this
                    # one, never reuse the connection.
                    proto.force_close()
                proto.listener = None
                heads.clear()
                return answer
        failure = proto.exception()
        if failure is not None:
            self._failed(exchange, failure)
        elif heads:
            # Only 1xx so far: aiohttp stopped the read timer at its end, but
            # the final answer is still due (Exchange.read_head does the same).
            proto.start_timeout()
        return None

    def _failed(self, exchange: Exchange, exc: BaseException) -> None:
        """The upstream failed before an answer head: retry once, or 502/504."""
        proto = exchange.proto
        proto.listener = None
        self._exchange = None
        exchange.release(reuse=False)
        stale = isinstance(exc, (ServerDisconnectedError, ClientOSError)) and not proto.answered
        if stale and self._message.method in IDEMPOTENT:
            # The stale keep-alive race: the upstream closed this idle
            # connection as we reused it, and saw nothing of ours.
            self._spawn(self._relay(may_retry=False))
            return
        self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        status, error, kind = upstream_failure(
            exc, request_id=self._rid, upstream=self._upstream.name
        )
        sent = self._lane.write(error_answer(status, error, self._rid))
        self._complete(status, 0, None if sent else "client", kind)

    # --- with a task ----------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self.task = task = self._lane.loop.create_task(coro)
        task.add_done_callback(self._settle)

    def _settle(self, task: asyncio.Task[None]) -> None:
        """After the task: make sure the request was closed and logged.

        A task cancelled before its first step (the client left in the same
        loop turn the answer head arrived) never runs its own `finally`.
        """
        if not task.cancelled() and (exc := task.exception()) is not None:
            self.broke(exc)
            return
        if self._done:
            return
        exchange = self._exchange
        if exchange is not None:
            exchange.abandon()
        self._complete(CLIENT_CLOSED, self._sent, "client", None)

    def broke(self, exc: BaseException) -> None:
        """A bug of ours (an unexpected exception): cut both connections, log a 500.

        The client may already hold part of an answer, so it gets no error
        answer, only the cut (an incomplete message, never a success).
        """
        logger.error("proxy.internal_error", exc_info=exc, extra={"request_id": self._rid})
        self._lane.abort()
        exchange = self._exchange
        if exchange is not None:
            exchange.abandon()
        self._complete(500, self._sent, "proxy", None)

    async def _relay(self, *, may_retry: bool) -> None:
        """Wait for a connection (and the answer head), then stream the answer."""
        try:
            exchange = await self._pool.client.request(
                self._message.method,
                self._upstream_head(),
                None,
                chunked=False,
                connect_timeout=self._timeout.connect,
                read_timeout=self._timeout.sock_read,
                may_retry=may_retry,
            )
        except UPSTREAM_FAILURES as exc:
            self._fail(exc)
            return
        except asyncio.CancelledError:
            self._complete(CLIENT_CLOSED, 0, "client", None)
            raise
        self._exchange = exchange
        message = exchange.message
        head, framing = self._response_head(message)
        await self._stream(exchange, head, framing, message.code)

    async def _stream(self, exchange: Exchange, head: bytes, framing: Framing, status: int) -> None:
        """Relay the answer body as it comes, then give the connection back."""
        sent, error = 0, None
        aborted: str | None = "client"
        try:
            sent, aborted = await copy_body(
                self._lane, exchange.content, head, framing, self._rid, tap=self._tap
            )
            if aborted == "upstream":
                error = "aborted"
        except asyncio.CancelledError:  # the client went away
            exchange.finish()
            self._complete(CLIENT_CLOSED, sent, "client", None)
            raise
        # Any other exception is a bug: _settle() -> broke() cuts and logs it.
        exchange.finish()
        self._complete(status, sent, aborted, error)

    # --- shared -----------------------------------------------------------------

    def _upstream_head(self) -> bytes:
        message = self._message
        lane = self._lane
        head, _ = upstream_request_head(
            message.method,
            message.path,
            message.raw_headers,
            policy=self._proxy.policy,
            peer=lane.peer,
            scheme=lane.scheme,
            request_id=self._rid,
            default_host=self._pool.host_header,
            body=False,
        )
        return head

    def _response_head(self, message: RawResponseMessage) -> tuple[bytes, Framing]:
        if self._tap is not None:
            self._tap.started(message.code, message.headers.items())
        return response_head(
            message,
            method=self._message.method,
            request_id=self._rid.encode(),
            date=http_date(),
            target=self._shown,
        )

    def _copy_headers(self) -> Iterable[tuple[str, str]]:
        """The headers an upstream gets for this request (for its shadow copy)."""
        lane = self._lane
        return upstream_request_headers(
            self._message.headers,
            policy=self._proxy.policy,
            peer=lane.peer,
            scheme=lane.scheme,
            request_id=self._rid,
        ).items()

    def _complete(self, status: int, sent: int, aborted: str | None, error: str | None) -> None:
        if self._done:
            return
        self._done = True
        if self._tap is not None:
            self._tap.finished(complete=aborted is None and error is None)
        proxy = self._proxy
        proxy.metrics.in_flight -= 1
        proxy.pools.release(self._pool)
        message = self._message
        try:
            proxy.record(
                request_id=self._rid,
                route=self._route,
                target=self._target,
                method=message.method,
                raw_target=message.path,
                status=status,
                body_bytes=sent,
                start=self._start,
                aborted=aborted,
                upstream_error=error,
            )
        finally:
            self._lane.call_done(self)
