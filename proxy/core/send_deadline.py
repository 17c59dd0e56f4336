"""nginx's send_timeout: a client that leaves its answer unread is cut.

A client connection's socket buffer fills when the client stops reading;
the transport then pauses the writer (`pause_writing`), and every byte the
upstream sends waits in the proxy while the upstream connection stays taken.
Five clients asking for a large answer and never reading held a five-connection
pool past any read timeout. `SendDeadline` is armed while the writer is
paused and cut the connection (abort) when it stays paused for `seconds`;
the request's upstream connection is then closed as for any client that left.
Both request paths' connection classes use it (`proxy.fastlane.lane.FastLane`,
`proxy.serving.protocol.ProxyRequestHandler`); the request sets `seconds`
from its route and upstream (`proxy.upstream.limits.send_timeout`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from proxy.routing.model import DEFAULT_SEND_TIMEOUT

if TYPE_CHECKING:
    from asyncio import BaseTransport

__all__ = ["SendDeadline", "set_send_timeout"]

logger = logging.getLogger(__name__)


class SendDeadline:
    """The timer of one client connection while its writer is paused."""

    __slots__ = ("_handle", "seconds")

    def __init__(self) -> None:
        self.seconds = DEFAULT_SEND_TIMEOUT
        self._handle: asyncio.TimerHandle | None = None

    def paused(self, transport: BaseTransport | None, peer: object = None) -> None:
        """The client stopped taking bytes: cut it after `seconds` unless it resumes."""
        if self._handle is None and transport is not None:
            loop = asyncio.get_running_loop()
            self._handle = loop.call_later(self.seconds, self._expire, transport, peer)

    def resumed(self) -> None:
        """The client reads again (or is gone): no deadline."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _expire(self, transport: BaseTransport, peer: object) -> None:
        self._handle = None
        if transport.is_closing():
            return
        logger.warning("proxy.send_timeout", extra={"peer": peer, "seconds": self.seconds})
        transport.abort()  # type: ignore[attr-defined]


def set_send_timeout(handler: object, seconds: float) -> None:
    """Set the send timeout of the connection `handler` serves, if it keeps one."""
    deadline: SendDeadline | None = getattr(handler, "send_deadline", None)
    if deadline is not None:
        deadline.seconds = seconds
