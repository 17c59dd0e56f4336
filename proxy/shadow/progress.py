"""A comparison run's progress: a bar on a terminal, plain periodic lines elsewhere.

On a terminal the bar is redrawn in place several times a second:

    [##########----------]  250/500  48.2/s  3 mismatches  ETA 0:00:05

Written to a pipe or a file (a CI log), the same facts come as one line every
`every` seconds, and a last line when the run is over, so a log never fills
with carriage returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Final, TextIO

from proxy.shadow.model import Outcome

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["Progress"]

_BAR: Final = 20
_TERMINAL_EVERY: Final = 0.2


class Progress:
    """Counts finished requests (`result`) and shows them between `start()` and `close()`."""

    def __init__(
        self,
        *,
        total: int,
        stream: TextIO,
        terminal: bool,
        every: float = 10.0,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = total
        self.done = 0
        self.mismatches = 0
        self._stream = stream
        self._terminal = terminal
        self._every = _TERMINAL_EVERY if terminal else every
        self._now = now
        self._started = now()
        self._task: asyncio.Task[None] | None = None

    def result(self, outcome: Outcome) -> None:
        """One request is done (compared, skipped or failed)."""
        self.done += 1
        self.mismatches += outcome is Outcome.MISMATCH

    def start(self) -> None:
        self._started = self._now()
        self._task = asyncio.create_task(self._show(), name="compare-progress")

    async def close(self) -> None:
        """Stop redrawing and show the final state (ending the bar's line)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._write(final=True)

    def line(self) -> str:
        """The current state as text (without the bar)."""
        elapsed = max(self._now() - self._started, 1e-9)
        rate = self.done / elapsed
        left = max(self.total - self.done, 0)
        eta = "-" if rate <= 0 else _clock(left / rate)
        return (
            f"{self.done}/{self.total} requests  {rate:.1f}/s  "
            f"{self.mismatches} mismatches  ETA {eta}"
        )

    async def _show(self) -> None:
        while True:
            await asyncio.sleep(self._every)
            self._write(final=False)

    def _write(self, *, final: bool) -> None:
        if self._terminal:
            filled = _BAR * self.done // self.total if self.total else _BAR
            bar = "#" * filled + "-" * (_BAR - filled)
            # \r and "erase line": the bar is redrawn where it stands.
            self._stream.write(f"\r\x1b[K[{bar}]  {self.line()}" + ("\n" if final else ""))
        else:
            self._stream.write(f"compare: {'done ' if final else ''}{self.line()}\n")
        self._stream.flush()


def _clock(seconds: float) -> str:
    whole = int(seconds + 0.5)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"
