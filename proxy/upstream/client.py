"""A thin HTTP/1.1 client for plain forwarding: one keep-alive pool per upstream.

aiohttp's `ClientSession` builds a `ClientRequest`, a `ClientResponse`, header
multidicts, a URL, traces and timers for every request: about a third of a
small proxied request. The proxy needs none of it: it already has the request
head as bytes (`proxy.core.headers.upstream_request_head`). This module writes that
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

from proxy.errors import ProxyError
from proxy.upstream.exchange import Exchange, RequestBody, ResponseProtocol

if TYPE_CHECKING:
    import ssl as ssl_module

    from proxy.upstream.limits import ClientLimits

__all__ = ["IDEMPOTENT", "ConnectionPool", "Exchange", "UpstreamUnreachable"]

# RFC 9110 §9.2.2; a request with a body is never replayed whatever its method.
IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


class UpstreamUnreachable(ProxyError):
    """Connecting to the upstream failed (refused, unreachable, DNS, TLS): a 502."""


class _Slots:
    """A counting semaphore that can also be taken without awaiting (`try_take`).

    The fast lane takes a pooled connection from a plain callback, where
    asyncio.Semaphore has no way in. Waiters are served first come, first
    served; a slot freed while someone waits goes straight to them.
    """

    __slots__ = ("_free", "_waiters")

    def __init__(self, limit: int) -> None:
        self._free = limit
        self._waiters: deque[asyncio.Future[None]] = deque()

    def try_take(self) -> bool:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return True
        return False

    async def take(self) -> None:
        if self.try_take():
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.give()  # handed a slot as we were cancelled: pass it on
            elif waiter in self._waiters:
                # Not there when give() already skipped it (cancelled in the
                # same loop turn), as asyncio.Semaphore also allows for.
                self._waiters.remove(waiter)
            raise

    def give(self) -> None:
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1


class ConnectionPool:
    """Keep-alive connections to one upstream (`host`:`port`, TLS when `ssl`; or a Unix socket)."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        ssl: ssl_module.SSLContext | None,
        limit: int,
        keepalive_timeout: float,
        limits: ClientLimits,
        unix: str | None = None,
    ) -> None:
        self.host = host
        # A Unix socket path instead of host:port (the in-process app's own
        # socket for shadow copies, `proxy.serving.shadowsite`).
        self.unix = unix
        self.port = port
        self.ssl = ssl
        self.limit = limit
        self.keepalive_timeout = keepalive_timeout
        self.limits = limits
        # A plain answer's head (`proxy.fastlane.plainanswer`) is at most this long: no
        # line of it can then exceed the parser's line and field limits, nor
        # its line count the header limit (a header line is 6 bytes or more).
        self.max_plain_head = min(
            limits.max_line_size, limits.max_field_size, 6 * limits.max_headers
        )
        # Most recently used last: hot connections are reused first.
        self._idle: deque[tuple[ResponseProtocol, float]] = deque()
        self._slots = _Slots(limit)
        self._open: set[ResponseProtocol] = set()
        self._sweep: asyncio.TimerHandle | None = None
        self._closed = False
        # The event loop, looked up once: asyncio.get_running_loop() costs a
        # getpid() system call on every call (its fork check).
        self._loop: asyncio.AbstractEventLoop | None = None

    def _get_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop

    @property
    def open_connections(self) -> int:
        """Connections open now, idle or in use."""
        return len(self._open)

    @property
    def idle_connections(self) -> int:
        """Connections waiting in the pool for a request."""
        return len(self._idle)

    async def request(
        self,
        method: str,
        head: bytes,
        body: RequestBody | None,
        *,
        chunked: bool,
        connect_timeout: float | None,
        read_timeout: float | None,
        may_retry: bool = True,
    ) -> Exchange:
        """Send one request; return once the final response head has arrived.

        `may_retry=False` when this request already met the stale keep-alive
        race once (the fast lane's first try): it is not sent a third time.

        Raises TimeoutError (connect, pool wait or first read), UpstreamUnreachable,
        or aiohttp's ClientError / HttpProcessingError for a broken answer.
        """
        loop = self._loop or self._get_loop()
        deadline = None if connect_timeout is None else loop.time() + connect_timeout
        retry = may_retry and body is None and method in IDEMPOTENT
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

    async def _acquire(self, deadline: float | None) -> tuple[ResponseProtocol, bool]:
        slots = self._slots
        if not slots.try_take():
            async with asyncio.timeout_at(deadline):
                await slots.take()
        try:
            proto = self._pop_idle()
            if proto is not None:
                return proto, True
            return await self._connect(deadline), False
        except BaseException:
            slots.give()
            raise

    def take_idle(self) -> ResponseProtocol | None:
        """An idle keep-alive connection, counted as in use; None when there is
        none free right now (then `request` waits or connects).

        For the fast lane, which cannot await: it sends on the connection with
        an `Exchange` and gives it back with `Exchange.release`/`finish`.
        """
        if not self._idle or not self._slots.try_take():
            return None
        proto = self._pop_idle()
        if proto is None:
            self._slots.give()
        return proto

    def _pop_idle(self) -> ResponseProtocol | None:
        idle = self._idle
        if not idle:
            return None
        expired = (self._loop or self._get_loop()).time() - self.keepalive_timeout
        while idle:
            proto, since = idle.pop()
            # `answered` while idle: the upstream sent bytes no request asked
            # for, so the stream can no longer be trusted.
            usable = since >= expired and not proto.should_close and not proto.answered
            if usable and proto.is_connected():
                return proto
            self._discard(proto)
        return None

    async def _connect(self, deadline: float | None) -> ResponseProtocol:
        if self._closed:
            msg = "the upstream pool is closed"
            raise UpstreamUnreachable(msg)
        loop = self._loop or self._get_loop()
        try:
            async with asyncio.timeout_at(deadline):
                if self.unix is not None:
                    _, proto = await loop.create_unix_connection(
                        lambda: ResponseProtocol(loop), self.unix
                    )
                else:
                    _, proto = await loop.create_connection(
                        lambda: ResponseProtocol(loop),
                        self.host,
                        self.port,
                        ssl=self.ssl,
                        server_hostname=self.host if self.ssl is not None else None,
                    )
        except OSError as exc:
            where = self.unix or f"{self.host}:{self.port}"
            msg = f"cannot connect to {where}: {exc}"
            raise UpstreamUnreachable(msg) from exc
        self._open.add(proto)
        return proto

    def release(self, proto: ResponseProtocol, *, reuse: bool) -> None:
        """Give a connection back: kept for the next request, or closed."""
        try:
            if reuse and not self._closed and not proto.should_close and proto.is_connected():
                proto.answered = False
                loop = self._loop or self._get_loop()
                self._idle.append((proto, loop.time()))
                if self._sweep is None:
                    self._sweep = loop.call_later(self.keepalive_timeout, self._expire)
            else:
                self._discard(proto)
        finally:
            self._slots.give()

    def _discard(self, proto: ResponseProtocol) -> None:
        self._open.discard(proto)
        # abort, not close: a half-sent request or half-read answer must not
        # linger, and the upstream sees the connection go at once.
        proto.abort()

    def _expire(self) -> None:
        self._sweep = None
        loop = self._loop or self._get_loop()
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
