"""Recording sampled exchanges to capture files, off the request path.

A request path that relays a captured request hands its tap's answer here
(`CaptureWriter.offer`), which only queues it (a bounded queue: full means
the record is dropped and counted). A writer task redacts each record
(Authorization, Proxy-Authorization, Cookie and Set-Cookie values always;
the route's `redact` headers, query parameters and JSON paths), turns it
into one line (`proxy.shadow.records`) and appends batches to the file in a
thread, under an advisory lock on `<file>.lock`, so several worker processes
can share one file: a line is never split, and only one of them rotates the
file to `<file>.1` once it reaches `max_size`. A write that fails (a full
disk, a missing directory that cannot be made) stops capturing to that file
for a minute, logged once, counted; serving never notices.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final
from urllib.parse import parse_qsl, quote

from proxy.shadow.model import Answer, SkipReason
from proxy.shadow.records import Recorded, to_line
from proxy.shadow.redact import mask, redact_answer, redact_headers, redact_json_body

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from pathlib import Path

    from proxy.routing.model import Capture
    from proxy.shadow.tap import PrimaryTap

__all__ = ["CaptureWriter", "redact_target"]

logger = logging.getLogger(__name__)

_PAUSE: Final = 60.0  # seconds a file that failed is left alone
_BATCH: Final = 256


@dataclass(slots=True, kw_only=True)
class _Pending:
    capture: Capture
    route_id: str
    at: float
    method: str
    target: str
    headers: Callable[[], Iterable[tuple[str, str]]]
    body: bytes | None
    answer: Answer


class CaptureWriter:
    """The capture queue of one process; `counts[(route, outcome)]` for the metrics.

    Outcomes: `written`, `dropped` (the queue was full, or the bytes held for
    answers), `error` (the file could not be written).
    """

    def __init__(self, *, queue_size: int = 4096) -> None:
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue(queue_size)
        self._task: asyncio.Task[None] | None = None
        self._failed: dict[Path, float] = {}  # file -> when it may be tried again
        self.counts: dict[tuple[str, str], int] = {}

    def count(self, route_id: str, outcome: str) -> None:
        key = (route_id, outcome)
        self.counts[key] = self.counts.get(key, 0) + 1

    def follow(
        self,
        capture: Capture,
        route_id: str,
        *,
        method: str,
        target: str,
        headers: Callable[[], Iterable[tuple[str, str]]],
        tap: PrimaryTap,
    ) -> None:
        """Record the exchange `tap` watches once its answer is complete."""

        def done(answer: asyncio.Future[Answer | SkipReason | None]) -> None:
            result = answer.result()
            if isinstance(result, Answer):
                body = tap.request_body
                self.offer(
                    capture,
                    route_id,
                    method=method,
                    target=target,
                    headers=headers,
                    body=body,
                    answer=result,
                )
            elif result is SkipReason.QUEUE_FULL:
                self.count(route_id, "dropped")  # the bytes held for answers ran out

        tap.answer.add_done_callback(done)

    def offer(
        self,
        capture: Capture,
        route_id: str,
        *,
        method: str,
        target: str,
        headers: Callable[[], Iterable[tuple[str, str]]],
        body: bytes | None,
        answer: Answer,
    ) -> None:
        """Queue one exchange for its file (never blocks; full: dropped and counted)."""
        pending = _Pending(
            capture=capture,
            route_id=route_id,
            at=time.time() - answer.latency,
            method=method,
            target=target,
            headers=headers,
            body=body,
            answer=answer,
        )
        try:
            self._queue.put_nowait(pending)
        except asyncio.QueueFull:
            self.count(route_id, "dropped")

    async def start(self) -> None:
        self._task = asyncio.create_task(self._write_forever(), name="capture-writer")

    async def close(self) -> None:
        """Write what is queued (bounded by a few seconds), then stop."""
        task, self._task = self._task, None
        if task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), 5.0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _write_forever(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < _BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._write(batch)
            except Exception:  # a bug of ours must not stop capturing for good
                logger.exception("proxy.capture_error")
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _write(self, batch: list[_Pending]) -> None:
        files: dict[Path, tuple[Capture, list[tuple[str, bytes]]]] = {}
        for pending in batch:
            capture = pending.capture
            files.setdefault(capture.file, (capture, []))[1].append(
                (pending.route_id, to_line(_redacted(pending)))
            )
        now = time.monotonic()
        for path, (capture, lines) in files.items():
            if self._failed.get(path, 0.0) > now:
                for route_id, _ in lines:
                    self.count(route_id, "error")
                continue
            data = b"".join(line for _, line in lines)
            try:
                await asyncio.to_thread(_append, path, data, capture.max_size)
            except OSError as exc:
                self._failed[path] = now + _PAUSE
                # Once per pause, not per record: a full disk would flood the log.
                logger.warning(
                    "proxy.capture_failed",
                    extra={"file": str(path), "error": str(exc), "paused_for": _PAUSE},
                )
                for route_id, _ in lines:
                    self.count(route_id, "error")
                continue
            self._failed.pop(path, None)
            for route_id, _ in lines:
                self.count(route_id, "written")


def _redacted(pending: _Pending) -> Recorded:
    capture = pending.capture
    names, paths = capture.redact_headers, capture.redact_json
    headers = redact_headers(tuple(pending.headers()), names)
    content_type = next((v for k, v in headers if k.lower() == "content-type"), None)
    body = pending.body or b""
    return Recorded(
        at=pending.at,
        route=pending.route_id,
        method=pending.method,
        target=redact_target(pending.target, capture.redact_query),
        headers=headers,
        body=redact_json_body(body, content_type, paths)[: capture.max_body] if body else b"",
        # None: the path streamed the body and kept none of it.
        body_truncated=pending.body is None or len(body) > capture.max_body,
        answer=redact_answer(pending.answer, names, paths),
    )


def redact_target(target: str, names: frozenset[str]) -> str:
    """`target` with the values of the query parameters in `names` masked."""
    path, mark, query = target.partition("?")
    if not mark or not names:
        return target
    pairs = parse_qsl(query, keep_blank_values=True)
    if not any(name in names for name, _ in pairs):
        return target  # byte for byte, as the client sent it
    return (
        path
        + "?"
        + "&".join(
            f"{quote(name, safe='')}={quote(mask(value) if name in names else value, safe='')}"
            for name, value in pairs
        )
    )


def _append(path: Path, data: bytes, max_size: int) -> None:
    """Append whole lines under the file's lock; rotate to `<file>.1` past `max_size`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(path.name + ".lock")
    with lock.open("ab") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        try:
            if path.exists() and path.stat().st_size + len(data) > max_size > 0:
                path.replace(path.with_name(path.name + ".1"))
            with path.open("ab") as file:
                file.write(data)
        finally:
            fcntl.flock(held, fcntl.LOCK_UN)
