"""A request body on aiohttp's path: read whole when small, timed when slow.

As nginx's request buffering: a body up to the route's `request_buffering`
size is read whole before an upstream connection is taken, so a client that
trickles its body holds no pooled connection (a hundred such clients used to
take a hundred-connection pool, and every other request got 504). A larger
body streams, from what was read so far. Either way the wait for the next
body bytes is bounded by the client body timeout (`ClientBodyTimeout`,
answered 408).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from proxy.upstream.limits import ClientBodyTimeout

if TYPE_CHECKING:
    from aiohttp.streams import StreamReader

__all__ = ["BufferedBody", "TimedBody", "take_body"]


class BufferedBody:
    """A whole request body, read before the upstream connection was taken."""

    __slots__ = ("_data",)

    def __init__(self, data: bytes) -> None:
        self._data = data

    @property
    def data(self) -> bytes:
        """The whole body, until it is read."""
        return self._data

    def read_nowait(self) -> bytes:
        data, self._data = self._data, b""
        return data

    def at_eof(self) -> bool:
        return not self._data

    async def readany(self) -> bytes:
        return self.read_nowait()


class TimedBody:
    """What was read of a larger body, then the rest as it comes, each wait bounded."""

    __slots__ = ("_content", "_first", "_timeout")

    def __init__(self, first: bytes, content: StreamReader, timeout: float) -> None:
        self._first = first
        self._content = content
        self._timeout = timeout

    def read_nowait(self) -> bytes:
        first, self._first = self._first, b""
        return first + self._content.read_nowait()

    def at_eof(self) -> bool:
        return not self._first and self._content.at_eof()

    async def readany(self) -> bytes:
        if self._first:
            return self.read_nowait()
        return await _read(self._content, self._timeout)


async def take_body(
    content: StreamReader, *, length: int | None, limit: int, idle: float
) -> BufferedBody | TimedBody:
    """The body whole when it ends within `limit` bytes, else a `TimedBody`.

    `length` is the Content-Length (None: chunked). Raises `ClientBodyTimeout`
    when the client sends nothing for `idle` seconds.
    """
    if length is not None and length > limit:
        return TimedBody(b"", content, idle)
    parts = bytearray()
    while len(parts) <= limit:
        chunk = await _read(content, idle)
        if not chunk:
            return BufferedBody(bytes(parts))
        parts += chunk
    return TimedBody(bytes(parts), content, idle)


async def _read(content: StreamReader, idle: float) -> bytes:
    try:
        async with asyncio.timeout(idle):
            return await content.readany()
    except TimeoutError as exc:
        raise ClientBodyTimeout from exc
