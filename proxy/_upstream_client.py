"""A thin HTTP/1.1 client for plain forwarding: one keep-alive pool per upstream.

aiohttp's `ClientSession` builds a `ClientRequest`, a `ClientResponse`, header
multidicts, a URL, traces and timers for every request: about a third of a
small proxied request. The proxy needs none of it: it already has the request
head as bytes (`proxy.headers.upstream_request_head`). This module writes that
head (with the first body bytes when they are already here) in one write and
reads the answer with aiohttp's own client protocol, `ResponseHandler`: the
same llhttp C parser, per-read timeout, flow control and payload errors as
`ClientSession`, so the body relay and failure mapping are unchanged.

Connection rules (nginx's and aiohttp's):

- at most `limit` connections in use; further requests wait, and that wait
  counts against the connect timeout;
- a connection goes back to the pool only when its answer was read to the end,
  its request body was sent whole, and neither side asked to close; idle ones
  are closed after `keepalive_timeout`;
- a request is sent again only when it is idempotent, has no body, went out on
  a reused connection and that connection closed before a single response
  byte arrived (the upstream closed an idle keep-alive connection just as we
  reused it); never otherwise.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Final

from aiohttp.client_exceptions import ClientOSError, ServerDisconnectedError
from aiohttp.client_proto import ResponseHandler

from proxy.errors import ProxyError

if TYPE_CHECKING:
    import ssl as ssl_module

    from aiohttp.http import RawResponseMessage
    from aiohttp.streams import StreamReader

    from proxy.upstreams import ClientLimits

__all__ = ["ConnectionPool", "Exchange", "UpstreamUnreachable"]

# RFC 9110 §9.2.2; a request with a body is never replayed whatever its method.
_IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
_LAST_CHUNK: Final = b"0\r\n\r\n"


class UpstreamUnreachable(ProxyError):
    """Connecting to the upstream failed (refused, unreachable, DNS, TLS): a 502."""


class _Protocol(ResponseHandler):
    """aiohttp's client protocol, noting whether a response byte has arrived."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.answered = False

    def data_received(self, data: bytes) -> None:
        self.answered = True
        super().data_received(data)


class ConnectionPool:
    """Keep-alive connections to one upstream (`host`:`port`, TLS when `ssl`)."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        ssl: ssl_module.SSLContext | None,
        limit: int,
        keepalive_timeout: float,
        limits: ClientLimits,
    ) -> None:
        self.host = host
        self.port = port
        self.ssl = ssl
        self.limit = limit
        self.keepalive_timeout = keepalive_timeout
        self.limits = limits
        # Most recently used last: hot connections are reused first.
        self._idle: deque[tuple[_Protocol, float]] = deque()
        self._slots = asyncio.Semaphore(limit)
        self._open: set[_Protocol] = set()
        self._sweep: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def open_connections(self) -> int:
        """Connections open now, idle or in use."""
        return len(self._open)

    async def request(
        self,
        method: str,
        head: bytes,
        body: StreamReader | None,
        *,
        chunked: bool,
        connect_timeout: float | None,
        read_timeout: float | None,
    ) -> Exchange:
        """Send one request; return once the final response head has arrived.

        Raises TimeoutError (connect, pool wait or first read), UpstreamUnreachable,
        or aiohttp's ClientError / HttpProcessingError for a broken answer.
        """
        loop = asyncio.get_running_loop()
        deadline = None if connect_timeout is None else loop.time() + connect_timeout
        retry = body is None and method in _IDEMPOTENT
        while True:
            proto, reused = await self._acquire(deadline)
            exchange = Exchange(self, proto)
            try:
                exchange.send(method, head, body, chunked=chunked, read_timeout=read_timeout)
                await exchange.read_head()
            except (ServerDisconnectedError, ClientOSError):
                exchange.release(reuse=False)
                if retry and reused and not proto.answered:
                    # The stale keep-alive race: the upstream closed this idle
                    # connection as we reused it, and saw nothing of ours.
                    retry = False
                    continue
                raise
            except BaseException:
                exchange.release(reuse=False)
                raise
            return exchange

    async def _acquire(self, deadline: float | None) -> tuple[_Protocol, bool]:
        slots = self._slots
        if slots.locked():
            async with asyncio.timeout_at(deadline):
                await slots.acquire()
        else:
            await slots.acquire()  # free: returns without suspending
        try:
            proto = self._pop_idle()
            if proto is not None:
                return proto, True
            return await self._connect(deadline), False
        except BaseException:
            slots.release()
            raise

    def _pop_idle(self) -> _Protocol | None:
        idle = self._idle
        if not idle:
            return None
        expired = asyncio.get_running_loop().time() - self.keepalive_timeout
        while idle:
            proto, since = idle.pop()
            # `answered` while idle: the upstream sent bytes no request asked
            # for, so the stream can no longer be trusted.
            usable = since >= expired and not proto.should_close and not proto.answered
            if usable and proto.is_connected():
                return proto
            self._discard(proto)
        return None

    async def _connect(self, deadline: float | None) -> _Protocol:
        if self._closed:
            msg = "the upstream pool is closed"
            raise UpstreamUnreachable(msg)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(deadline):
                _, proto = await loop.create_connection(
                    lambda: _Protocol(loop),
                    self.host,
                    self.port,
                    ssl=self.ssl,
                    server_hostname=self.host if self.ssl is not None else None,
                )
        except OSError as exc:
            msg = f"cannot connect to {self.host}:{self.port}: {exc}"
            raise UpstreamUnreachable(msg) from exc
        self._open.add(proto)
        return proto

    def release(self, proto: _Protocol, *, reuse: bool) -> None:
        """Give a connection back: kept for the next request, or closed."""
        try:
            if reuse and not self._closed and not proto.should_close and proto.is_connected():
                proto.answered = False
                loop = asyncio.get_running_loop()
                self._idle.append((proto, loop.time()))
                if self._sweep is None:
                    self._sweep = loop.call_later(self.keepalive_timeout, self._expire)
            else:
                self._discard(proto)
        finally:
            self._slots.release()

    def _discard(self, proto: _Protocol) -> None:
        self._open.discard(proto)
        # abort, not close: a half-sent request or half-read answer must not
        # linger, and the upstream sees the connection go at once.
        proto.abort()

    def _expire(self) -> None:
        self._sweep = None
        loop = asyncio.get_running_loop()
        expired = loop.time() - self.keepalive_timeout
        idle = self._idle
        while idle and idle[0][1] < expired:
            self._discard(idle.popleft()[0])
        if idle:
            self._sweep = loop.call_at(idle[0][1] + self.keepalive_timeout, self._expire)

    async def close(self) -> None:
        """Close every connection; ones in use close when they are released."""
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        while self._idle:
            self._discard(self._idle.pop()[0])
        # Let the transports run their connection_lost callbacks.
        await asyncio.sleep(0)


class Exchange:
    """One request and its answer on a pooled connection.

    `status`, `reason`, `headers` and `content` (a StreamReader) are set once
    `ConnectionPool.request` returns. `finish()` returns the connection to the
    pool when everything was read and sent, and closes it otherwise.
    """

    __slots__ = ("_body_task", "_done", "_pool", "_proto", "content", "message")

    # Set by read_head(), before `ConnectionPool.request` returns the exchange.
    message: RawResponseMessage
    content: StreamReader

    def __init__(self, pool: ConnectionPool, proto: _Protocol) -> None:
        self._pool = pool
        self._proto = proto
        self._body_task: asyncio.Task[None] | None = None
        self._done = False

    def send(
        self,
        method: str,
        head: bytes,
        body: StreamReader | None,
        *,
        chunked: bool,
        read_timeout: float | None,
    ) -> None:
        proto = self._proto
        limits = self._pool.limits
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
            transport.write(head + _LAST_CHUNK if chunked else head)
            proto.start_timeout()
            return
        transport.write(head)
        self._body_task = asyncio.get_running_loop().create_task(
            _send_body(proto, body, chunked=chunked)
        )

    async def read_head(self) -> None:
        read = self._proto.read
        while True:
            message, payload = await read()
            code = message.code
            # 1xx interim answers (103 Early Hints, a late 100 Continue) are
            # not relayed; a 101 to a request that asked for no upgrade is broken.
            if not 100 <= code < 200:  # noqa: PLR2004
                break
            if code == 101:  # noqa: PLR2004
                msg = "upstream switched protocols on a plain request"
                raise ServerDisconnectedError(msg)
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
        self._pool.release(self._proto, reuse=reuse)

    def finish(self) -> None:
        """Done with the answer: pool the connection if it is clean, close it otherwise."""
        content = self.content
        self.release(reuse=content.is_eof() and content.exception() is None)


async def _send_body(proto: _Protocol, body: StreamReader, *, chunked: bool) -> None:
    """Stream the rest of the client's body upstream, honouring the socket's flow control."""
    try:
        while True:
            chunk = await body.readany()
            transport = proto.transport
            if transport is None:
                return  # connection_lost already failed the answer
            if not chunk:
                if chunked:
                    transport.write(_LAST_CHUNK)
                break
            transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
            if proto.writing_paused:
                await proto._drain_helper()  # noqa: SLF001 - aiohttp's own drain for this protocol
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        # The client's body broke (bad chunking, disconnect) or the upstream
        # went away: fail the answer, never send a truncated body as complete.
        proto.set_exception(ClientOSError(f"request body not sent: {exc!r}"), exc)
        # The transport's abort, not the protocol's: that one would clear the
        # exception the answer is waiting on.
        if (transport := proto.transport) is not None:
            transport.abort()
        return
    proto.start_timeout()
