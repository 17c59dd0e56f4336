"""The primary's answer, copied as it is relayed, for one shadowed request.

A request path that relays a shadowed request calls `started` with the
answer's head, `feed` with each body piece it writes to the client, and
`finished` once; it never waits on the tap. The copy stops at `max_body`
(the relay goes on): the answer is marked truncated (a shadow does not
compare it; a capture records what it has). All the
taps of a process share one `Buffers` budget, so the bytes held for copies
stay bounded however many are queued.
"""

from __future__ import annotations

from time import perf_counter
from typing import TYPE_CHECKING

from proxy.shadow.model import Answer, SkipReason

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable, Iterable

__all__ = ["Buffers", "PrimaryTap"]


class Buffers:
    """The bytes all taps of a process hold for copies, and their limit."""

    __slots__ = ("limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0


class PrimaryTap:
    """Copies one primary answer; `answer` resolves when the relay is over.

    `answer` gets the `Answer` (`truncated` past `max_body`), or
    `SkipReason.QUEUE_FULL` when the shared budget ran out, or None when the
    relay did not complete. `request_body` is the request's body for a
    capture: empty for a request without one, None when the path streamed it
    and kept none. `on_start` is called once with
    the tap when the head is known (the runtime queues the copy then; False:
    not queued); `on_lost` when the primary ended without an answer head (the
    proxy's own 502/504). `release()` gives the bytes back to the budget.
    """

    __slots__ = (
        "_body",
        "_buffers",
        "_headers",
        "_held",
        "_lost",
        "_max",
        "_refused",
        "_size",
        "_start",
        "_status",
        "answer",
        "on_start",
        "request_body",
    )

    def __init__(
        self,
        *,
        max_body: int,
        buffers: Buffers,
        answer: asyncio.Future[Answer | SkipReason | None],
        on_start: Callable[[PrimaryTap], bool],
        on_lost: Callable[[], None],
    ) -> None:
        self._start = perf_counter()
        self._max = max_body
        self._buffers = buffers
        self._body: list[bytes] | None = None  # None until started, and after a refused start
        self._size = 0
        self._held = 0  # bytes taken from the budget
        self._refused: SkipReason | None = None
        self._status = 0
        self._headers: tuple[tuple[str, str], ...] = ()
        self._lost = on_lost
        self.on_start = on_start
        self.answer = answer
        self.request_body: bytes | None = b""

    def started(self, status: int, headers: Iterable[tuple[str, str]]) -> None:
        """The primary's final answer head; the copy may go out from now on."""
        self._status = status
        self._headers = tuple(headers)
        on_start, self.on_start = self.on_start, _started
        if on_start(self):
            self._body = []

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """A piece of the primary's body, as relayed to the client."""
        body = self._body
        if body is None or self._refused is not None:
            return
        size = len(data)
        room = self._max - self._size
        self._size += size
        if room <= 0:
            return
        if size > room:
            data, size = data[:room], room
        buffers = self._buffers
        if buffers.used + size > buffers.limit:
            self._drop(SkipReason.QUEUE_FULL)
            return
        buffers.used += size
        self._held += size
        body.append(bytes(data))

    def _drop(self, reason: SkipReason) -> None:
        self._refused = reason
        self.release()
        if self._body is not None:
            self._body.clear()

    def release(self) -> None:
        """Give the copied bytes back to the shared budget (once the copy is compared)."""
        self._buffers.used -= self._held
        self._held = 0

    def finished(self, *, complete: bool) -> None:
        """The relay is over; `complete`: the client got the whole answer."""
        answer = self.answer
        # Drop the callbacks: they hold the request's objects, which hold this
        # tap, a cycle only the garbage collector would free otherwise.
        self.on_start, lost, self._lost = _started, self._lost, _nothing
        if answer.done():
            return
        if self._body is None:
            if not self._status:
                lost()  # no head ever came: nothing was queued
            answer.set_result(None)
            return
        if not complete or self._refused is not None:
            self.release()
            answer.set_result(self._refused)
            return
        answer.set_result(
            Answer(
                status=self._status,
                headers=self._headers,
                body=b"".join(self._body),
                truncated=self._size > self._max,
                latency=perf_counter() - self._start,
            )
        )


def _started(_: PrimaryTap) -> bool:
    """What a tap's `on_start` becomes once used: the start is not queued twice."""
    return False


def _nothing() -> None:
    """What a tap's `on_lost` becomes once the relay is over."""
