"""Live reload of routes.yaml: watch the directory, validate whole, swap atomically.

`RoutesWatcher.table` is the current `RouteTable`. A request reads it once and
keeps that table to the end, so a swap (one attribute assignment of a new
immutable table) never changes a request in flight.

The watcher polls rather than using inotify: it stats the directory and the
file (mtime_ns, size, inode), which also catches a file replaced by rename (how
editors and deploy tools write) and bind mounts whose inode changes. New content
is applied only once two consecutive polls read the same bytes, so an in-place
write is applied once it has held still for a poll interval (a writer stalled
longer on a valid prefix gets that prefix applied: rename a finished file into
place to be safe). A candidate table must also pass `validator` (the running
proxy's rules, `proxy.serving.check.reload_errors`). An invalid or refused file keeps the
last good table, logs ``proxy.routes_reload_failed``, counts a failure and shows
in `last_result`. `reload()` (what SIGHUP calls) reads and applies at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Self, TypeAlias

from proxy.errors import RoutesError
from proxy.routing.table import RouteTable, load_routes, parse_routes

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from pathlib import Path
    from types import TracebackType

__all__ = ["ReloadListener", "ReloadResult", "RoutesWatcher", "Validator"]

logger = logging.getLogger(__name__)

# Besides reacting to stat changes, re-read the file every N polls: coarse mtime
# resolution (some network and overlay filesystems) can hide a same-size rewrite.
_VERIFY_EVERY = 10
_MISSING = "missing"  # the "digest" of a file that cannot be read

ReloadListener: TypeAlias = "Callable[[RouteTable, RouteTable], None]"
# Every reason a valid table must not replace the active one; empty: apply it.
Validator: TypeAlias = "Callable[[RouteTable], Sequence[str]]"


@dataclass(frozen=True, slots=True, kw_only=True)
class ReloadResult:
    """The outcome of the last load attempt.

    Attributes:
        ok: the content was valid (and is now the active table).
        at: when, in Unix epoch seconds.
        digest: sha256 of the content tried (None when the file could not be read).
        error: every problem found, one per line (None when ok).
        changed: the active table was replaced (False for unchanged content or a failure).
        trigger: "initial", "watch" or "reload" (an explicit `reload()`, e.g. SIGHUP).
    """

    ok: bool
    at: float
    digest: str | None
    error: str | None = None
    changed: bool = False
    trigger: str = "watch"


@dataclass(frozen=True, slots=True)
class _Snapshot:
    digest: str
    data: bytes | None  # None: unreadable, `error` says why
    error: str | None = None


class RoutesWatcher:
    """Holds the active route table and keeps it in step with the file.

    `validator`, when set, vets every new table after parsing; a table it
    objects to is a failed reload like an invalid file.
    """

    def __init__(
        self, path: Path, *, poll_interval: float = 0.5, validator: Validator | None = None
    ) -> None:
        self.path = path
        self.poll_interval = poll_interval
        self.validator = validator
        self._seen = self._signature()
        self.table: RouteTable = load_routes(path)
        self.last_result = ReloadResult(
            ok=True, at=time.time(), digest=self.table.digest, changed=True, trigger="initial"
        )
        self.reload_successes = 0
        self.reload_failures = 0
        self._listeners: list[ReloadListener] = []
        self._task: asyncio.Task[None] | None = None
        self._settled = self.table.digest  # content already acted upon (applied or rejected)
        self._pending: str | None = None  # content seen once, waiting to be seen again
        self._polls = 0
        self._generation = 0  # bumped by reload(), so a slower poll never overwrites it

    def add_listener(self, listener: ReloadListener) -> None:
        """Call ``listener(old_table, new_table)`` after every swap."""
        self._listeners.append(listener)

    def reload(self) -> ReloadResult:
        """Read, validate and apply the file now (what SIGHUP does)."""
        self._generation += 1
        self._pending = None
        self._seen = self._signature()
        snapshot = self._read()
        self._settled = snapshot.digest
        if snapshot.data is None:
            return self._fail(None, snapshot.error or "unreadable", trigger="reload")
        if snapshot.digest == self.table.digest:
            return self._record_ok(snapshot.digest, trigger="reload")
        try:
            table = parse_routes(snapshot.data, self.path)
        except RoutesError as exc:
            return self._fail(snapshot.digest, _describe(exc), trigger="reload")
        return self._apply(table, trigger="reload")

    async def poll(self) -> ReloadResult | None:
        """One polling step; the result when it tried to apply new content, else None."""
        snapshot = self._observe()
        if snapshot is None:
            return None
        if snapshot.data is None:
            return self._fail(None, snapshot.error or "unreadable", trigger="watch")
        if snapshot.digest == self.table.digest:
            return self._record_ok(snapshot.digest, trigger="watch")  # e.g. restored after a delete
        generation = self._generation
        table: RouteTable | None = None
        error = ""
        try:
            # Parsing runs in a thread so a large file never stalls the proxy's loop.
            table = await asyncio.to_thread(parse_routes, snapshot.data, self.path)
        except RoutesError as exc:
            error = _describe(exc)
        if generation != self._generation:
            # An explicit reload() ran meanwhile and read a newer file: this
            # result, good or bad, is older than the one it recorded.
            return None
        if table is None:
            return self._fail(snapshot.digest, error, trigger="watch")
        return self._apply(table, trigger="watch")

    def _observe(self) -> _Snapshot | None:
        # Decide whether the file holds new content that has stopped changing.
        self._polls += 1
        signature = self._signature()
        verify = self._polls % _VERIFY_EVERY == 0
        if signature == self._seen and self._pending is None and not verify:
            return None
        self._seen = signature
        snapshot = self._read()
        if snapshot.digest == self._settled:
            self._pending = None
            return None
        if snapshot.digest != self._pending:
            self._pending = snapshot.digest  # first sighting: wait for it to hold still
            return None
        self._pending = None
        self._settled = snapshot.digest
        return snapshot

    def _signature(self) -> tuple[int, ...] | None:
        try:
            directory = self.path.parent.stat()
            file = self.path.stat()
        except OSError:
            return None
        return (directory.st_mtime_ns, file.st_ino, file.st_dev, file.st_size, file.st_mtime_ns)

    def _read(self) -> _Snapshot:
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            return _Snapshot(digest=_MISSING, data=None, error=f"cannot read {self.path}: {exc}")
        return _Snapshot(digest=hashlib.sha256(data).hexdigest(), data=data)

    def _apply(self, table: RouteTable, *, trigger: str) -> ReloadResult:
        problems = self.validator(table) if self.validator is not None else ()
        if problems:
            return self._fail(table.digest, "\n".join(problems), trigger=trigger)
        return self._swap(table, trigger=trigger)

    def _swap(self, table: RouteTable, *, trigger: str) -> ReloadResult:
        old, self.table = self.table, table
        self._settled = table.digest
        self.reload_successes += 1
        self.last_result = ReloadResult(
            ok=True, at=time.time(), digest=table.digest, changed=True, trigger=trigger
        )
        logger.info(
            "proxy.routes_reloaded",
            extra={"routes_path": str(self.path), "digest": table.digest, "trigger": trigger},
        )
        for listener in self._listeners:
            # The swap is done; a failing listener must not undo it or stop the others.
            try:
                listener(old, table)
            except Exception:
                logger.exception("proxy.routes_listener_failed", extra={"digest": table.digest})
        return self.last_result

    def _record_ok(self, digest: str, *, trigger: str) -> ReloadResult:
        self.reload_successes += 1
        self.last_result = ReloadResult(ok=True, at=time.time(), digest=digest, trigger=trigger)
        return self.last_result

    def _fail(self, digest: str | None, error: str, *, trigger: str) -> ReloadResult:
        self.reload_failures += 1
        self.last_result = ReloadResult(
            ok=False, at=time.time(), digest=digest, error=error, trigger=trigger
        )
        logger.error(
            "proxy.routes_reload_failed",
            extra={
                "routes_path": str(self.path),
                "digest": digest,
                "error": error,
                "trigger": trigger,
                "active_digest": self.table.digest,
            },
        )
        return self.last_result

    async def start(self) -> None:
        """Start watching (idempotent)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=f"routes-watcher:{self.path}")

    async def stop(self) -> None:
        """Stop watching and wait for the task to end."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            # The watcher must outlive any surprise (a transient filesystem error,
            # a listener bug): log it and keep polling.
            try:
                await self.poll()
            except Exception:
                logger.exception("proxy.routes_watch_error", extra={"routes_path": str(self.path)})


def _describe(exc: RoutesError) -> str:
    return "\n".join(str(error) for error in exc.errors)
