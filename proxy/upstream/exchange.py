"""One request and its answer on a pooled upstream connection (`proxy.upstream.client`).

`Exchange.send` writes the prebuilt request head, with the body bytes already
received, in one write, and streams the rest of the body in a task; the
answer is read by aiohttp's own client protocol (`ResponseHandler`).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final, Protocol

from aiohttp.client_exceptions import ClientOSError, ServerDisconnectedError, ServerTimeoutError
from aiohttp.client_proto import ResponseHandler
from aiohttp.helpers import _EXC_SENTINEL

from proxy.upstream.limits import ClientBodyTimeout, ClientLimits

if TYPE_CHECKING:
    from collections.abc import Callable

    from aiohttp.http import RawResponseMessage
    from aiohttp.streams import StreamReader


__all__ = [
    "LAST_CHUNK",
    "ConnectionOwner",
    "Exchange",
    "RequestBody",
    "ResponseProtocol",
    "is_interim",
]

LAST_CHUNK: Final = b"0\r\n\r\n"
_CLOCK_SLACK: Final = 0.001


class ResponseProtocol(ResponseHandler):
    """aiohttp's client protocol, noting whether a response byte has arrived.

    With a `listener` (the fast lane, which does not await), answer heads go
    to `heads` instead of the queue `read()` waits on, and the listener is
    called after each read and on a failure: it looks at `heads` and
    `exception()`, and detaches itself once it has what it waited for.

    With a `sink` (the fast lane again, for the rest of a body of known
    length), bytes read go to the sink as they are, past the parser: no copy
    into a StreamReader, no re-framing. The per-read timeout still runs; a
    failure (timeout, connection lost) detaches the sink and calls
    `sink_failed` soon after.

    With `expect_plain` (the fast lane once more), the first read of the
    answer goes to the `plain` callback before any aiohttp parser exists
    (`proxy.fastlane.plainanswer`): when it takes the answer, aiohttp's parser never
    sees it; when it does not, a parser is made then and reads the same
    bytes, exactly as if it had been there all along.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.answered = False
        self.listener: Callable[[], None] | None = None
        self.heads: list[tuple[RawResponseMessage, StreamReader]] = []
        self._deadline: float | None = None
        self.sink: Callable[[bytes], None] | None = None
        self.sink_failed: Callable[[BaseException], None] | None = None
        self.plain: Callable[[bytes], bool] | None = None
        self._plain_limits: ClientLimits | None = None

    def expect_plain(
        self,
        on_plain: Callable[[bytes], bool],
        *,
        read_timeout: float | None,
        limits: ClientLimits,
    ) -> None:
        """Offer the next answer's first read to `on_plain`, which says whether it took it.

        For a request whose answer has a body (not HEAD). The listener sees
        the answer only when `on_plain` did not take it.
        """
        self.answered = False
        self.plain = on_plain
        self._plain_limits = limits
        self._read_timeout = read_timeout
        # The last answer's parser is done with; the fallback makes a new one.
        self._parser = None
        self._payload = None

    def pause_sink(self) -> None:
        """Stop reading while the sink's client cannot take more (no parser involved)."""
        self._reading_paused = True
        self._pause_transport_reading()
        self._drop_timeout()  # the wait is the client's, not the upstream's

    def resume_sink(self) -> None:
        """Read on after `pause_sink`."""
        if self._reading_paused:
            self._reading_paused = False
            if not self._buffer_paused:
                self._resume_transport_reading()
            self._reschedule_timeout()

    def stop_timeout(self) -> None:
        """The answer is all here (a plain answer read past the parser)."""
        self._deadline = None  # what _drop_timeout does, without the call

    def data_received(self, data: bytes) -> None:
        if (sink := self.sink) is not None:
            self._reschedule_timeout()
            sink(data)
            return
        self.answered = True
        if (plain := self.plain) is not None:
            self.plain = None
            # A read restarts the read timeout, as in aiohttp's data_received:
            # a plain answer taken whole stops it (finish_plain), a sink goes on.
            self._reschedule_timeout()
            if plain(data):
                return
            limits = self._plain_limits
            assert limits is not None  # noqa: S101 - set with `plain`
            _expect_answer(self, "GET", self._read_timeout, limits)
            self.answered = True
        super().data_received(data)
        if self.listener is not None:
            self.listener()

    def feed_data(self, data: tuple[RawResponseMessage, StreamReader], size: int = 0) -> None:
        if self.listener is not None:
            self.heads.append(data)
        else:
            super().feed_data(data, size)

    def set_exception(self, exc: BaseException, exc_cause: BaseException = _EXC_SENTINEL) -> None:
        super().set_exception(exc, exc_cause)
        if self.listener is not None:
            # Later, not from inside connection_lost or the parser's error path.
            self._loop.call_soon(self._notify)
        if (failed := self.sink_failed) is not None:
            self.sink = self.sink_failed = None
            self._loop.call_soon(failed, exc)

    def _notify(self) -> None:
        if self.listener is not None:
            self.listener()

    # Two of aiohttp's per-answer costs the proxy does without.
    #
    # aiohttp resumes reading after every chunk read from an answer, paused or
    # not, and resuming feeds its parser an empty read (for decompression,
    # which the proxy never does): with nothing paused there is nothing to do.
    def resume_reading(self, resume_parser: bool = True) -> None:  # noqa: FBT001, FBT002 - aiohttp's signature
        if self._reading_paused or self._buffer_paused:
            super().resume_reading(resume_parser)

    # aiohttp re-arms its per-read timer (a cancel and a call_later) on every
    # read and cancels it at the end of every answer. Here a read moves a
    # deadline, and the one timer re-arms itself to the deadline when it fires
    # early: a float store per read instead of timer-heap work.
    def _reschedule_timeout(self) -> None:
        timeout = self._read_timeout
        if not timeout:
            self._deadline = None
            return
        loop = self._loop
        self._deadline = deadline = loop.time() + timeout
        handle = self._read_timeout_handle
        # A new timer only when none runs or it would fire too late (a route
        # with a shorter read timeout than the last request on this connection).
        if handle is None or deadline < handle.when():
            if handle is not None:
                handle.cancel()
            self._read_timeout_handle = loop.call_at(deadline, self._check_deadline)

    # aiohttp's start_timeout only calls _reschedule_timeout: skip the hop.
    start_timeout = _reschedule_timeout

    def _drop_timeout(self) -> None:
        self._deadline = None

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        # A pending timer would keep this closed connection alive until it fires.
        if (handle := self._read_timeout_handle) is not None:
            handle.cancel()
            self._read_timeout_handle = None

    def _check_deadline(self) -> None:
        self._read_timeout_handle = None
        deadline = self._deadline
        if deadline is None:
            return
        loop = self._loop
        # The loop may run a timer up to its clock resolution early.
        if loop.time() + _CLOCK_SLACK >= deadline:
            self._deadline = None
            self._on_read_timeout()
        else:
            self._read_timeout_handle = loop.call_at(deadline, self._check_deadline)


class RequestBody(Protocol):
    """A request body to send (aiohttp's `StreamReader`, or the web path's buffered one)."""

    def read_nowait(self) -> bytes:
        """What is here now, without waiting."""
        ...

    def at_eof(self) -> bool:
        """Whether the whole body was read."""
        ...

    async def readany(self) -> bytes:
        """The next bytes; b"" at the end (may raise `ClientBodyTimeout`)."""
        ...


class ConnectionOwner(Protocol):
    """Where an exchange's connection came from (`proxy.upstream.client.ConnectionPool`)."""

    @property
    def limits(self) -> ClientLimits:
        """The response limits of the pool's connections."""
        ...

    def release(self, proto: ResponseProtocol, *, reuse: bool) -> None:
        """Take the connection back: keep it for the next request, or close it."""
        ...


class Exchange:
    """One request and its answer on a pooled connection.

    `status`, `reason`, `headers` and `content` (a StreamReader) are set once
    `ConnectionPool.request` returns. `finish()` returns the connection to the
    pool when everything was read and sent, and closes it otherwise.
    """

    __slots__ = ("_body_task", "_done", "_pool", "content", "message", "proto")

    # Set by read_head(), before `ConnectionPool.request` returns the exchange.
    message: RawResponseMessage
    content: StreamReader

    def __init__(self, pool: ConnectionOwner, proto: ResponseProtocol) -> None:
        self._pool = pool
        self.proto = proto
        self._body_task: asyncio.Task[None] | None = None
        self._done = False

    def send(
        self,
        method: str,
        head: bytes,
        body: RequestBody | None,
        *,
        chunked: bool,
        read_timeout: float | None,
        plain: Callable[[bytes], bool] | None = None,
    ) -> None:
        """Write the head (and what is here of the body); stream the rest in a task.

        With `plain`, the answer is read as `ResponseProtocol.expect_plain` says.
        """
        proto = self.proto
        if plain is not None:
            proto.expect_plain(plain, read_timeout=read_timeout, limits=self._pool.limits)
        else:
            _expect_answer(proto, method, read_timeout, self._pool.limits)
        transport = proto.transport
        if transport is None:
            msg = "upstream connection lost"
            raise ServerDisconnectedError(msg)
        if body is None:
            transport.write(head)
            proto.start_timeout()
            return
        # Body bytes already received go out with the head, in one write.
        try:
            first = body.read_nowait()
        except Exception as exc:
            msg = f"request body not readable: {exc!r}"
            raise ClientOSError(msg) from exc
        if first:
            head += b"%x\r\n%b\r\n" % (len(first), first) if chunked else first
        if body.at_eof():
            transport.write(head + LAST_CHUNK if chunked else head)
            proto.start_timeout()
            return
        transport.write(head)
        self._body_task = asyncio.get_running_loop().create_task(
            _send_body(proto, body, chunked=chunked, stall_timeout=read_timeout)
        )

    async def read_head(self) -> None:
        proto = self.proto
        while True:
            message, payload = await proto.read()
            if not is_interim(message.code):
                break
            if not len(proto):
                # aiohttp stops the read timer at the end of every bodiless
                # message, a 1xx included; the final answer is still due.
                proto.start_timeout()
        self.message = message
        self.content = payload

    def release(self, *, reuse: bool) -> None:
        if self._done:
            return
        self._done = True
        task = self._body_task
        if task is not None and not task.done():
            task.cancel()
            reuse = False
        elif task is not None and (task.cancelled() or task.exception() is not None):
            reuse = False
        self._pool.release(self.proto, reuse=reuse)

    def abandon(self) -> None:
        """Detach the fast lane's callbacks and close the connection (never pooled)."""
        proto = self.proto
        proto.listener = proto.sink = proto.sink_failed = proto.plain = None
        self.release(reuse=False)

    def finish(self) -> None:
        """Done with the answer: pool the connection if it is clean, close it otherwise."""
        content = self.content
        self.release(reuse=content.is_eof() and content.exception() is None)

    def finish_plain(self) -> None:
        """Done with a plain answer (`ResponseProtocol.expect_plain`), body and all."""
        self.proto.stop_timeout()
        self.release(reuse=True)


def _expect_answer(
    proto: ResponseProtocol, method: str, read_timeout: float | None, limits: ClientLimits
) -> None:
    # How aiohttp's ClientSession sets up its protocol for an answer.
    proto.answered = False
    proto.set_response_params(
        skip_payload=method == "HEAD",
        read_until_eof=True,
        auto_decompress=False,
        read_timeout=read_timeout,
        read_bufsize=limits.read_bufsize,
        max_line_size=limits.max_line_size,
        max_field_size=limits.max_field_size,
        max_headers=limits.max_headers,
    )


def is_interim(code: int) -> bool:
    """Whether an answer is a 1xx to skip (103 Early Hints, a late 100 Continue).

    Raises ServerDisconnectedError for a 101: the request asked for no upgrade.
    """
    if code == 101:  # noqa: PLR2004
        msg = "upstream switched protocols on a plain request"
        raise ServerDisconnectedError(msg)
    return 100 <= code < 200  # noqa: PLR2004


async def _send_body(
    proto: ResponseProtocol, body: RequestBody, *, chunked: bool, stall_timeout: float | None
) -> None:
    """Stream the rest of the client's body upstream, honouring the socket's flow control.

    An upstream that takes no body bytes for `stall_timeout` (its read
    timeout, as nginx's proxy_send_timeout) fails the request with a
    timeout: while it stalls the proxy reads nothing from the client, so
    a client that left would otherwise hold the connection unnoticed.
    """
    try:
        while True:
            chunk = await body.readany()
            transport = proto.transport
            if transport is None:
                return  # connection_lost already failed the answer
            if not chunk:
                if chunked:
                    transport.write(LAST_CHUNK)
                break
            transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
            if proto.writing_paused:
                async with asyncio.timeout(stall_timeout):
                    await proto._drain_helper()  # noqa: SLF001 - aiohttp's own drain for this protocol
    except asyncio.CancelledError:
        raise
    except ClientBodyTimeout as exc:
        # The client's fault, answered 408 by the caller (not a 502).
        _fail(proto, exc, exc)
        return
    except TimeoutError as exc:
        _fail(proto, ServerTimeoutError("upstream took no request body bytes in time"), exc)
        return
    except Exception as exc:
        # The client's body broke (bad chunking, disconnect) or the upstream
        # went away: fail the answer, never send a truncated body as complete.
        _fail(proto, ClientOSError(f"request body not sent: {exc!r}"), exc)
        return
    proto.start_timeout()


def _fail(proto: ResponseProtocol, error: BaseException, cause: BaseException) -> None:
    proto.set_exception(error, cause)
    # The transport's abort, not the protocol's: that one would clear the
    # exception the answer is waiting on.
    if (transport := proto.transport) is not None:
        transport.abort()
