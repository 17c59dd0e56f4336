"""What a fast-lane request (`proxy.fastlane.call`) needs of its client connection.

`proxy.fastlane.lane.FastLane` is the one implementation; the Protocol keeps
the request's modules from importing the lane that imports them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import asyncio

__all__ = ["LaneConnection"]


class LaneConnection(Protocol):
    """A client connection in the fast lane, as its request in flight sees it."""

    loop: asyncio.AbstractEventLoop
    # The client's address and scheme, for the forwarding headers.
    peer: str | None
    scheme: str
    # True while the client's socket buffer is full.
    writing_paused: bool

    def write(self, data: bytes) -> bool:
        """Write to the client; False when it is gone."""
        ...

    def abort(self) -> None:
        """Cut the client connection; nothing more is read from it."""
        ...

    async def drained(self) -> None:
        """Until the client's socket takes writes again (or is gone)."""
        ...

    def call_done(self, call: object) -> None:
        """`call` is answered and logged: close, or read the next request."""
        ...
