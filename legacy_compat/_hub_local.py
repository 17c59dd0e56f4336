"""The sockets one hub instance holds: writers, replay, catch-up, slow consumers.

Each socket has one writer task. It first replays history after the client's
ids (live frames meanwhile wait in the socket, bounded), then sends queued
frames one by one; a send that stalls for `send_timeout`, or a queue that
overflows, closes the socket with `SLOW_CONSUMER_CLOSE` (1013). Stalls are
found by one watchdog task for all sockets rather than a timer per frame,
which would cost more than the send itself.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Final

from aiohttp import WSCloseCode, WSMsgType

from legacy_compat._hub_redis import REDIS_ERRORS
from legacy_compat._hub_socket import KINDS, HubSocket, Kind, StreamId, format_stream_id, frame

if TYPE_CHECKING:
    from collections.abc import Awaitable, Iterable

    from aiohttp import web

    from legacy_compat._hub_redis import HubRedis

__all__ = ["SLOW_CONSUMER_CLOSE", "HubStats", "LocalSockets"]

logger = logging.getLogger("legacy_compat._hub")

# Close code for a socket that cannot keep up (RFC 6455 "Try Again Later").
SLOW_CONSUMER_CLOSE: Final = WSCloseCode.TRY_AGAIN_LATER


@dataclass(slots=True, kw_only=True)
class HubStats:
    """Counters and state, read from `WebSocketHub.stats` (export them as metrics).

    Attributes:
        redis_connected: the subscription to the fan-out channel is up.
        redis_disconnects / redis_reconnects: subscription losses and recoveries.
        published / publish_failures: sends stored in Redis / that fell back to local.
        local_only: sends delivered to this instance's sockets only (Redis down).
        delivered: frames written to sockets (live); replayed: history frames written.
        slow_consumers: sockets closed with 1013; sockets: sockets held now.
    """

    redis_connected: bool = False
    redis_disconnects: int = 0
    redis_reconnects: int = 0
    published: int = 0
    publish_failures: int = 0
    local_only: int = 0
    delivered: int = 0
    replayed: int = 0
    slow_consumers: int = 0
    sockets: int = 0

    def as_dict(self) -> dict[str, int | bool]:
        return asdict(self)


class LocalSockets:
    """Registry of this instance's sockets, by user and by WebSocketResponse."""

    def __init__(
        self,
        redis: HubRedis,
        stats: HubStats,
        *,
        queue_size: int,
        send_timeout: float,
        close_timeout: float,
    ) -> None:
        self._redis = redis
        self._stats = stats
        self._queue_size = queue_size
        self._send_timeout = send_timeout
        self._close_timeout = close_timeout
        self._by_user: dict[str, set[HubSocket]] = {}
        self._by_ws: dict[web.WebSocketResponse, HubSocket] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._watchdog: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._watchdog is None:
            self._watchdog = asyncio.create_task(self._watch(), name="hub-watchdog")

    async def stop(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            await asyncio.gather(self._watchdog, return_exceptions=True)
            self._watchdog = None
        await self.close_all()

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(max(self._send_timeout / 4, 0.05))
            deadline = loop.time() - self._send_timeout
            for sock in list(self._by_ws.values()):
                if sock.send_started is not None and sock.send_started < deadline:
                    self._close_slow(sock)

    def __contains__(self, ws: web.WebSocketResponse) -> bool:
        return ws in self._by_ws

    def add(
        self, user: str, ws: web.WebSocketResponse, resume_from: dict[Kind, StreamId | None]
    ) -> None:
        sock = HubSocket(user=user, ws=ws, queue_size=self._queue_size, resume_from=resume_from)
        self._by_user.setdefault(user, set()).add(sock)
        self._by_ws[ws] = sock
        self._stats.sockets = len(self._by_ws)
        sock.writer = asyncio.create_task(self._write_loop(sock), name=f"hub-writer-{user}")

    async def remove(self, user: str, ws: web.WebSocketResponse) -> None:
        sock = self._by_ws.get(ws)
        if sock is None or sock.user != user:
            return
        self._detach(sock)
        if sock.writer is not None and sock.writer is not asyncio.current_task():
            sock.writer.cancel()
            await asyncio.gather(sock.writer, return_exceptions=True)

    def deliver(self, kind: Kind, user: str, sid: StreamId | None, data: bytes) -> None:
        """Offer a frame to the user's sockets ("u") or to all of them ("b")."""
        targets: Iterable[HubSocket] = (
            self._by_ws.values() if kind == "b" else self._by_user.get(user, ())
        )
        for sock in list(targets):
            if not sock.offer(kind, sid, data):
                self._close_slow(sock)

    async def close_all(self) -> None:
        for sock in list(self._by_ws.values()):
            self._detach(sock)
            if sock.writer is not None:
                sock.writer.cancel()
            self._spawn(self._close(sock, WSCloseCode.GOING_AWAY, b"server shutdown"))
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def catch_up(self) -> None:
        """After a (re)subscribe, send each socket what it missed meanwhile.

        Called from the subscriber task, so live messages wait in the
        subscription buffer and arrive after this (the cursors drop repeats).
        """
        ready = [s for s in self._by_ws.values() if not s.resuming and not s.closing]
        groups: dict[tuple[Kind, str], list[HubSocket]] = {}
        for sock in ready:
            groups.setdefault(("u", sock.user), []).append(sock)
        if ready:
            groups["b", ""] = ready
        for (kind, user), socks in groups.items():
            key = self._redis.stream_key(kind, user)
            after = min(s.catch_up_from(kind) for s in socks)
            while page := await self._redis.read_page(key, after):
                for sid, body in page:
                    data = frame(kind, format_stream_id(sid), body)
                    for sock in socks:
                        if not sock.offer(kind, sid, data):
                            self._close_slow(sock)
                after = page[-1][0]

    def _detach(self, sock: HubSocket) -> None:
        if self._by_ws.pop(sock.ws, None) is None:
            return
        peers = self._by_user.get(sock.user)
        if peers is not None:
            peers.discard(sock)
            if not peers:
                del self._by_user[sock.user]
        self._stats.sockets = len(self._by_ws)

    def _close_slow(self, sock: HubSocket) -> None:
        if sock.closing:
            return
        sock.closing = True
        self._stats.slow_consumers += 1
        extra = {"user": sock.user, "queued": sock.queue.qsize(), "code": int(SLOW_CONSUMER_CLOSE)}
        logger.warning("legacy_compat.hub.slow_consumer_closed", extra=extra)
        self._detach(sock)
        if sock.writer is not None and sock.writer is not asyncio.current_task():
            sock.writer.cancel()
        self._spawn(self._close(sock, SLOW_CONSUMER_CLOSE, b"slow consumer"))

    async def _close(self, sock: HubSocket, code: int, reason: bytes) -> None:
        # drain=False and a bounded wait: a stuck peer must not hold the hub.
        try:
            async with asyncio.timeout(self._close_timeout):
                await sock.ws.close(code=code, message=reason, drain=False)
        except (TimeoutError, ConnectionError) as exc:
            logger.debug(
                "legacy_compat.hub.close_incomplete", extra={"user": sock.user, "error": repr(exc)}
            )

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write_loop(self, sock: HubSocket) -> None:
        try:
            await self._replay(sock)
            if not sock.end_resume():
                self._close_slow(sock)
                return
            while True:
                data = await sock.queue.get()
                await self._write(sock, data)
                self._stats.delivered += 1
        except ConnectionError:
            self._detach(sock)  # the peer is gone; serve() unregisters as well

    async def _write(self, sock: HubSocket, data: bytes) -> None:
        sock.send_started = asyncio.get_running_loop().time()
        await sock.ws.send_frame(data, WSMsgType.TEXT)
        sock.send_started = None

    async def _replay(self, sock: HubSocket) -> None:
        """Send history after the client's ids; without one, note the stream ends.

        A Redis failure here is not fatal: the catch-up after the reconnect
        continues from the cursors reached so far.
        """
        for kind in KINDS:
            if not self._stats.redis_connected:
                return
            key = self._redis.stream_key(kind, sock.user)
            after = sock.resume_from[kind]
            while True:
                try:
                    if after is None:
                        sock.tails[kind] = await self._redis.tail(key)
                        break
                    page = await self._redis.read_page(key, after)
                except REDIS_ERRORS as exc:
                    extra = {"user": sock.user, "error": repr(exc)}
                    logger.warning("legacy_compat.hub.replay_failed", extra=extra)
                    return
                for sid, body in page:
                    await self._write(sock, frame(kind, format_stream_id(sid), body))
                    sock.cursors[kind] = sid
                    self._stats.replayed += 1
                if not page:
                    break
                after = page[-1][0]
