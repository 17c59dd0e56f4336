"""WebSocket hub: per-user sockets on many instances, fanned out through Redis.

A message is written once, atomically (one Lua script), to a bounded Redis
Stream and published on one Pub/Sub channel; every instance delivers it to the
sockets it holds. The stream entry id is the id the client sees, and the
stream is the history a reconnecting client resumes from::

    send_to_user(42, m) ─► XADD club:ws:u:42 MAXLEN ~ history * m=<json>   ─┐ one script:
                           EXPIRE club:ws:u:42 history_ttl                   │ stream order
                           PUBLISH club:ws:events "u\\n42\\n<id>\\n<json>"  ─┘ = publish order
    every instance ─► its sockets of user 42 ─► {"msg_id": "<id>", ...m}

History bound: per user at least the newest `history` messages (``MAXLEN ~``
trims whole stream nodes, so up to about `history` + 100 are kept), dropped
once `history_ttl` seconds pass without a new message for that user.
Broadcasts use the same scheme on ``club:ws:broadcast``, with ``broadcast_id``
in the frame and ``last_broadcast_id`` to resume.

Delivery: each socket remembers the last id queued to it, so replay and live
traffic that overlap are sent once, in id order. When Redis goes away, the
hub keeps delivering to local sockets (frames with ``"msg_id": null``, not
stored, not seen by other instances), reconnects with backoff, then replays
to every local socket what it missed while the subscription was down.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Final, Self

from aiohttp import WSMsgType, web

from legacy_compat._hub_local import SLOW_CONSUMER_CLOSE, HubStats, LocalSockets
from legacy_compat._hub_redis import REDIS_ERRORS, HubRedis
from legacy_compat._hub_socket import (
    Kind,
    StreamId,
    encode_message,
    frame,
    parse_fanout,
    parse_stream_id,
    stream_id_arg,
    user_key,
)
from legacy_compat.errors import HubError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from types import TracebackType

    import redis.asyncio as aioredis

__all__ = ["SLOW_CONSUMER_CLOSE", "HubStats", "WebSocketHub"]

logger = logging.getLogger(__name__)

_PUBLISH_BACKOFF: Final = 1.0  # seconds without publish attempts after a failure
_RESUME_PARAMS: Final[dict[Kind, str]] = {"u": "last_id", "b": "last_broadcast_id"}


class WebSocketHub:
    """Registry of local sockets per user, with cross-instance delivery and resume.

    Wire it with ``hub.setup(app)`` (or ``async with hub:``); a ``/ws``
    handler is then ``return await hub.serve(request, user_id)``.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        prefix: str = "club:ws",
        history: int = 1000,
        history_ttl: float = 86_400.0,
        send_queue_size: int = 256,
        send_timeout: float = 10.0,
        heartbeat: float | None = 30.0,
        close_timeout: float = 5.0,
        publish_timeout: float = 2.0,
        reconnect_delay: tuple[float, float] = (0.1, 5.0),
    ) -> None:
        if history < 1 or send_queue_size < 1:
            msg = "history and send_queue_size must be at least 1"
            raise ValueError(msg)
        self._redis = HubRedis(
            redis,
            prefix=prefix,
            history=history,
            history_ttl=history_ttl,
            publish_timeout=publish_timeout,
            reconnect_delay=reconnect_delay,
        )
        self.stats = HubStats()
        self._local = LocalSockets(
            self._redis,
            self.stats,
            queue_size=send_queue_size,
            send_timeout=send_timeout,
            close_timeout=close_timeout,
        )
        self._heartbeat = heartbeat
        self._close_timeout = close_timeout
        self._subscriber: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._ever_subscribed = False
        self._local_seq = 0
        self._publish_retry_at = 0.0

    # --- lifecycle -------------------------------------------------------------

    async def start(self, *, connect_timeout: float = 5.0) -> None:
        """Start the subscriber; wait (bounded) until it listens, so early sends are seen."""
        if self._subscriber is not None:
            return
        self._local.start()
        self._subscriber = asyncio.create_task(
            self._redis.subscribe_forever(
                on_subscribed=self._on_subscribed,
                on_message=self._on_message,
                on_lost=self._on_lost,
            ),
            name="hub-subscriber",
        )
        try:
            await asyncio.wait_for(self._subscribed.wait(), connect_timeout)
        except TimeoutError:
            logger.warning(
                "legacy_compat.hub.start_without_redis", extra={"channel": self._redis.channel}
            )

    async def stop(self) -> None:
        """Close every local socket (1001 going away) and stop the subscriber."""
        if self._subscriber is not None:
            self._subscriber.cancel()
            await asyncio.gather(self._subscriber, return_exceptions=True)
            self._subscriber = None
        await self._local.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def cleanup_ctx(self, _app: web.Application) -> AsyncIterator[None]:
        """For ``app.cleanup_ctx.append(hub.cleanup_ctx)`` (`setup` also adds `on_shutdown`)."""
        await self.start()
        yield
        await self.stop()

    async def on_shutdown(self, _app: web.Application) -> None:
        """Close local sockets with 1001 before aiohttp waits for handlers to finish."""
        await self._local.close_all()

    def setup(self, app: web.Application) -> None:
        """Start and stop the hub with `app`, closing sockets at shutdown.

        Without the on_shutdown hook, aiohttp's graceful shutdown waits up to
        its `shutdown_timeout` for the open ``/ws`` handlers before cleanup runs.
        """
        app.on_shutdown.append(self.on_shutdown)
        app.cleanup_ctx.append(self.cleanup_ctx)

    # --- sending ---------------------------------------------------------------

    async def send_to_user(self, user_id: int | str, message: dict[str, Any]) -> str:
        """Deliver `message` to every socket of the user on every instance; its id."""
        return await self._send("u", user_key(user_id), message)

    async def broadcast(self, message: dict[str, Any]) -> str:
        """Deliver `message` to every socket on every instance; its id."""
        return await self._send("b", "", message)

    async def _send(self, kind: Kind, user: str, message: dict[str, Any]) -> str:
        body = encode_message(kind, message)
        loop = asyncio.get_running_loop()
        if loop.time() >= self._publish_retry_at:
            try:
                msg_id = await self._redis.publish(kind, user, body)
            except REDIS_ERRORS as exc:
                # Skip Redis for a moment: sends during an outage stay fast.
                self._publish_retry_at = loop.time() + _PUBLISH_BACKOFF
                self.stats.publish_failures += 1
                logger.warning(
                    "legacy_compat.hub.publish_failed", extra={"user": user, "error": repr(exc)}
                )
            else:
                self._publish_retry_at = 0.0
                self.stats.published += 1
                return msg_id
        # Redis is unreachable: local sockets still get it, without an id or history.
        self.stats.local_only += 1
        self._local_seq += 1
        self._local.deliver(kind, user, None, frame(kind, None, body))
        return f"local-{self._local_seq}"

    # --- sockets ---------------------------------------------------------------

    async def serve(
        self,
        request: web.Request,
        user_id: int | str,
        *,
        on_message: Callable[[web.WebSocketResponse, Any], Awaitable[None]] | None = None,
    ) -> web.WebSocketResponse:
        """A complete ``/ws`` handler: upgrade, register, resume from ``?last_id=``, run until closed.

        Messages the client sends go to `on_message` (ignored without one). A
        malformed ``last_id`` / ``last_broadcast_id`` is a 400 before the upgrade.
        """
        resume = {kind: request.query.get(name) for kind, name in _RESUME_PARAMS.items()}
        for kind, value in resume.items():
            if value is not None and parse_stream_id(value) is None:
                text = f"{_RESUME_PARAMS[kind]} must be a stream id like 1700000000000-0"
                raise web.HTTPBadRequest(text=text)
        ws = web.WebSocketResponse(
            heartbeat=self._heartbeat, timeout=self._close_timeout, compress=False
        )
        await ws.prepare(request)
        await self.register(user_id, ws, last_id=resume["u"], last_broadcast_id=resume["b"])
        try:
            async for msg in ws:
                if on_message is not None and msg.type in {WSMsgType.TEXT, WSMsgType.BINARY}:
                    await on_message(ws, msg.data)
        finally:
            await self.unregister(user_id, ws)
        return ws

    async def register(
        self,
        user_id: int | str,
        ws: web.WebSocketResponse,
        *,
        last_id: str | None = None,
        last_broadcast_id: str | None = None,
    ) -> None:
        """Attach a prepared socket; what it missed after the given ids is sent first."""
        if not ws.prepared or ws in self._local:
            msg = "register() needs a prepared WebSocketResponse that is not registered yet"
            raise HubError(msg)
        resume_from: dict[Kind, StreamId | None] = {
            "u": stream_id_arg(last_id),
            "b": stream_id_arg(last_broadcast_id),
        }
        self._local.add(user_key(user_id), ws, resume_from)

    async def unregister(self, user_id: int | str, ws: web.WebSocketResponse) -> None:
        """Detach a socket (it is not closed); unknown sockets are ignored."""
        await self._local.remove(user_key(user_id), ws)

    # --- subscriber callbacks: live fan-out, reconnects, catch-up --------------

    async def _on_subscribed(self) -> None:
        if self._ever_subscribed:
            self.stats.redis_reconnects += 1
            logger.info(
                "legacy_compat.hub.redis_reconnected", extra={"channel": self._redis.channel}
            )
        self._ever_subscribed = True
        self.stats.redis_connected = True
        await self._local.catch_up()
        self._subscribed.set()

    def _on_lost(self, exc: BaseException) -> None:
        if self.stats.redis_connected:
            self.stats.redis_disconnects += 1
            extra = {"channel": self._redis.channel, "error": repr(exc)}
            logger.warning("legacy_compat.hub.redis_lost", extra=extra)
        self.stats.redis_connected = False

    def _on_message(self, raw: bytes) -> None:
        parsed = parse_fanout(raw)
        if parsed is None:
            logger.warning("legacy_compat.hub.bad_fanout_message", extra={"size": len(raw)})
            return
        kind, user, msg_id, sid, body = parsed
        self._local.deliver(kind, user, sid, frame(kind, msg_id, body))
