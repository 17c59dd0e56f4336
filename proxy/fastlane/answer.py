"""What a fast lane writes: answer framing, its own error answers, and a body relayed by a task.

`copy_body` is the task path of `proxy.fastlane.call.LaneCall`: an answer whose
body must be waited for (chunked, read until close, or met on a fresh
connection) streams through it with the client's flow control, as
`proxy.webpath.relay` streams the aiohttp path's answers.
"""

from __future__ import annotations

import email.utils
import logging
import time
from typing import TYPE_CHECKING, Final

from proxy.core.answers import error_body
from proxy.core.headers import Framing
from proxy.upstream.exchange import LAST_CHUNK
from proxy.upstream.failures import UPSTREAM_FAILURES

if TYPE_CHECKING:
    from aiohttp.streams import StreamReader

    from proxy.fastlane.connection import LaneConnection
    from proxy.shadow.tap import PrimaryTap

__all__ = ["copy_body", "error_answer", "frame", "http_date"]

logger = logging.getLogger(__name__)

_STATUS_LINES: Final = {
    400: b"HTTP/1.1 400 Bad Request\r\n",
    502: b"HTTP/1.1 502 Bad Gateway\r\n",
    504: b"HTTP/1.1 504 Gateway Timeout\r\n",
}


class _Date:
    """The `Date` value, formatted once per second (as aiohttp does)."""

    __slots__ = ("_second", "_value")

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def now(self) -> bytes:
        second = int(time.time())
        if second != self._second:
            self._second = second
            self._value = email.utils.formatdate(second, usegmt=True).encode()
        return self._value


_date: Final = _Date()
http_date: Final = _date.now


async def copy_body(
    lane: LaneConnection,
    content: StreamReader,
    head: bytes,
    framing: Framing,
    request_id: str,
    *,
    tap: PrimaryTap | None = None,
) -> tuple[int, str | None]:
    """(Body bytes sent, why the answer was cut or None), as `proxy.webpath.relay`.

    The head is held back until the first body bytes unless the upstream
    makes us wait. `tap` gets a copy of each body piece (a shadowed route).
    """
    if framing is Framing.EMPTY:
        return 0, None if lane.write(head) else "client"
    chunked = framing is Framing.CHUNKED
    pending = head
    sent = 0
    while True:
        if pending and not content.is_eof() and content.total_bytes == sent:
            # Nothing buffered: let the client see the head while we wait.
            if not lane.write(pending):
                return sent, "client"
            pending = b""
        try:
            chunk = await content.readany()
        except UPSTREAM_FAILURES as exc:
            # Too late for a 502: cut the client connection so it sees a
            # truncated message, never a complete one.
            logger.warning(
                "proxy.upstream_aborted",
                extra={"request_id": request_id, "sent": sent, "error": repr(exc)},
            )
            lane.abort()
            return sent, "upstream"
        last = not chunk or content.at_eof()
        sent += len(chunk)
        if tap is not None:
            tap.feed(chunk)
        data = frame(chunk, last=last) if chunked else chunk
        if not lane.write(pending + data if pending else data):
            return sent, "client"
        pending = b""
        if last:
            return sent, None
        if lane.writing_paused:
            await lane.drained()


def frame(chunk: bytes, *, last: bool) -> bytes:
    """`chunk` as an HTTP/1.1 chunk (none for b""), then the last chunk if `last`."""
    data = b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunk else b""
    return data + LAST_CHUNK if last else data


def error_answer(status: int, error: str, request_id: str, *, close: bool = False) -> bytes:
    """The bytes of the proxy's own JSON error answer (`proxy.webpath.responses.ErrorResponse`).

    `close`: the connection closes after it (`Connection: close`).
    """
    body = error_body(error, request_id)
    return (
        b"%bX-Request-ID: %b\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%bDate: %b\r\n\r\n%b"
        % (
            _STATUS_LINES[status],
            request_id.encode(),
            len(body),
            b"Connection: close\r\n" if close else b"",
            http_date(),
            body,
        )
    )
