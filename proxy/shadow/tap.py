"""The primary's answer, copied as it is relayed, for one shadowed request.

A request path that relays a shadowed request calls `started` with the
answer's head, `feed` with each body piece it writes to the client, and
`finished` once; it never waits on the tap. The copy stops at the route's
`max_body` (the relay goes on): an answer cut there is not compared.
"""

from __future__ import annotations

from time import perf_counter
from typing import TYPE_CHECKING

from proxy.shadow.model import Answer

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable, Iterable

__all__ = ["PrimaryTap"]


class PrimaryTap:
    """Copies one primary answer; `answer` resolves when the relay is over.

    `on_start` is called once with the tap when the head is known (the
    runtime queues the copy then); `on_lost` when the primary ended without
    an answer to compare (the proxy's own 502/504, or a relay cut short).
    """

    __slots__ = (
        "_body",
        "_headers",
        "_lost",
        "_max",
        "_size",
        "_start",
        "_status",
        "answer",
        "on_start",
    )

    def __init__(
        self,
        *,
        max_body: int,
        answer: asyncio.Future[Answer | None],
        on_start: Callable[[PrimaryTap], bool],
        on_lost: Callable[[], None],
    ) -> None:
        self._start = perf_counter()
        self._max = max_body
        self._body: list[bytes] | None = None  # None until started, and after a refused start
        self._size = 0
        self._status = 0
        self._headers: tuple[tuple[str, str], ...] = ()
        self._lost = on_lost
        self.on_start = on_start
        self.answer = answer

    def started(self, status: int, headers: Iterable[tuple[str, str]]) -> None:
        """The primary's final answer head; the copy may go out from now on."""
        self._status = status
        self._headers = tuple(headers)
        if self.on_start(self):
            self._body = []

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """A piece of the primary's body, as relayed to the client."""
        body = self._body
        if body is None or self._size > self._max:
            return
        self._size += len(data)
        if self._size <= self._max:
            body.append(bytes(data))

    def finished(self, *, complete: bool) -> None:
        """The relay is over; `complete`: the client got the whole answer."""
        answer = self.answer
        if answer.done():
            return
        if self._body is None:
            if not self._status:
                self._lost()  # no head ever came: nothing was queued
            answer.set_result(None)
            return
        if not complete:
            answer.set_result(None)
            return
        answer.set_result(
            Answer(
                status=self._status,
                headers=self._headers,
                body=b"".join(self._body) if self._size <= self._max else b"",
                truncated=self._size > self._max,
                latency=perf_counter() - self._start,
            )
        )
