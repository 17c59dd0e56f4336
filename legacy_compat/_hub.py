"""WebSocket hub: per-user sockets on many instances, fanned out through Redis.

A message is written once, atomically (one Lua script), to a bounded Redis
Stream and published on one Pub/Sub channel; every instance subscribed to the
channel delivers it to the sockets it holds. The stream entry id is the
message id the client sees, and the stream is the history a reconnecting
client resumes from::

    send_to_user(42, m) ─► XADD club:ws:u:42 MAXLEN ~ history * m=<json>   ─┐ one script,
                           EXPIRE club:ws:u:42 history_ttl                   │ so stream order
                           PUBLISH club:ws:events "u\\n42\\n<id>\\n<json>"  ─┘ = publish order
    every instance ─► sockets of user 42 here ─► {"msg_id": "<id>", ...m}

History bound: per user the newest `history` messages at least (``MAXLEN ~``
trims whole stream nodes, so up to about `history` + 100 are kept), and none
once `history_ttl` seconds pass without a new message for that user.
Broadcasts use the same scheme on ``club:ws:broadcast`` with ``broadcast_id``
and the ``last_broadcast_id`` query parameter.

Delivery: each socket remembers the last id queued to it, so replay and live
traffic that overlap are sent once, in id order. When Redis goes away, the
hub keeps delivering to local sockets (frames with ``"msg_id": null``, not
stored, not seen by other instances), reconnects with backoff, then replays
to every local socket what it missed while the subscription was down.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Final, Self

import orjson
from aiohttp import WSCloseCode, WSMsgType, web
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from legacy_compat._hub_socket import (
    KINDS,
    HubSocket,
    Kind,
    StreamId,
    format_stream_id,
    frame,
    parse_stream_id,
)
from legacy_compat.errors import HubError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from types import TracebackType

    import redis.asyncio as aioredis

__all__ = ["HubStats", "WebSocketHub"]

logger = logging.getLogger(__name__)

# Close code for a socket that cannot keep up (RFC 6455 "Try Again Later").
SLOW_CONSUMER_CLOSE: Final = WSCloseCode.TRY_AGAIN_LATER
_USER_RE: Final = re.compile(r"[A-Za-z0-9_.:@-]{1,128}")
_REDIS_ERRORS: Final = (RedisError, OSError, TimeoutError)
_PAGE: Final = 200
_PUBLISH_BACKOFF: Final = 1.0  # seconds without publish attempts after a failure
_FANOUT_PARTS: Final = 4  # kind, user, id, body
_PUBLISH_LUA: Final = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'm', ARGV[2])
if tonumber(ARGV[3]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
redis.call('PUBLISH', ARGV[4], ARGV[5] .. '\\n' .. id .. '\\n' .. ARGV[2])
return id
"""


@dataclass(slots=True, kw_only=True)
class HubStats:
    """Counters and state, read from `WebSocketHub.stats` (export them as metrics)."""

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


class WebSocketHub:
    """Registry of local sockets per user, with cross-instance delivery and resume.

    Start and stop it with ``async with hub:`` or ``app.cleanup_ctx.append(hub.cleanup_ctx)``;
    a ``/ws`` handler is ``return await hub.serve(request, user_id)``.
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
        self._redis = redis
        self._prefix = prefix
        self._channel = f"{prefix}:events"
        self._history = history
        self._history_ttl = int(history_ttl)
        self._queue_size = send_queue_size
        self._send_timeout = send_timeout
        self._heartbeat = heartbeat
        self._close_timeout = close_timeout
        self._publish_timeout = publish_timeout
        self._reconnect_delay = reconnect_delay
        self._publish = redis.register_script(_PUBLISH_LUA)
        self._sockets: dict[str, set[HubSocket]] = {}
        self._by_ws: dict[web.WebSocketResponse, HubSocket] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._subscriber: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._ever_subscribed = False
        self._local_seq = 0
        self._publish_retry_at = 0.0
        self.stats = HubStats()

    # --- lifecycle -----------------------------------------------------------

    async def start(self, *, connect_timeout: float = 5.0) -> None:
        """Start the subscriber; wait (bounded) until it listens, so early sends are seen."""
        if self._subscriber is not None:
            return
        self._subscriber = asyncio.create_task(self._subscribe_loop(), name="hub-subscriber")
        try:
            await asyncio.wait_for(self._subscribed.wait(), connect_timeout)
        except TimeoutError:
            logger.warning("hub.start_without_redis", extra={"channel": self._channel})

    async def stop(self) -> None:
        """Close every local socket (1001 going away) and stop the subscriber."""
        if self._subscriber is not None:
            self._subscriber.cancel()
            await asyncio.gather(self._subscriber, return_exceptions=True)
            self._subscriber = None
        await self._close_all()

    async def _close_all(self) -> None:
        for sock in list(self._by_ws.values()):
            self._detach(sock)
            if sock.writer is not None:
                sock.writer.cancel()
            self._spawn(self._close(sock, WSCloseCode.GOING_AWAY, b"server shutdown"))
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def cleanup_ctx(self, _app: web.Application) -> AsyncIterator[None]:
        """For ``app.cleanup_ctx.append(hub.cleanup_ctx)`` (see `setup`)."""
        await self.start()
        yield
        await self.stop()

    async def on_shutdown(self, _app: web.Application) -> None:
        """Close local sockets with 1001 before aiohttp waits for handlers to finish."""
        await self._close_all()

    def setup(self, app: web.Application) -> None:
        """Wire the hub into `app`: started with it, sockets closed on shutdown.

        Without the on_shutdown hook, aiohttp's graceful shutdown waits up to
        its `shutdown_timeout` for the open ``/ws`` handlers before cleanup runs.
        """
        app.on_shutdown.append(self.on_shutdown)
        app.cleanup_ctx.append(self.cleanup_ctx)

    # --- sending -------------------------------------------------------------

    async def send_to_user(self, user_id: int | str, message: dict[str, Any]) -> str:
        """Deliver `message` to every socket of the user on every instance; its id."""
        user = _user_key(user_id)
        return await self._send("u", user, f"{self._prefix}:u:{user}", message)

    async def broadcast(self, message: dict[str, Any]) -> str:
        """Deliver `message` to every socket on every instance; its id."""
        return await self._send("b", "", f"{self._prefix}:broadcast", message)

    async def _send(self, kind: Kind, user: str, key: str, message: dict[str, Any]) -> str:
        body = _encode(kind, message)
        loop = asyncio.get_running_loop()
        if loop.time() >= self._publish_retry_at:
            args = [self._history, body, self._history_ttl, self._channel, f"{kind}\n{user}"]
            try:
                sid = await self._publish_with_retry(key, args)
            except _REDIS_ERRORS as exc:
                # Skip Redis for a moment: sends during an outage stay fast.
                self._publish_retry_at = loop.time() + _PUBLISH_BACKOFF
                self.stats.publish_failures += 1
                logger.warning("hub.publish_failed", extra={"user": user, "error": repr(exc)})
            else:
                self._publish_retry_at = 0.0
                self.stats.published += 1
                return sid.decode() if isinstance(sid, bytes) else str(sid)
        # Redis is unreachable: local sockets still get it, without an id or history.
        self.stats.local_only += 1
        self._local_seq += 1
        data = frame(kind, None, body)
        targets = self._by_ws.values() if kind == "b" else self._sockets.get(user, ())
        for sock in list(targets):
            self._offer(sock, kind, None, data)
        return f"local-{self._local_seq}"

    async def _publish_with_retry(self, key: str, args: list[Any]) -> Any:
        async with asyncio.timeout(self._publish_timeout):
            try:
                sid = await self._publish(keys=[key], args=args)
            except RedisConnectionError:
                # A pooled connection that died with a Redis restart fails its
                # first command; retry once on a fresh one. (Should the first
                # attempt have reached Redis after all, the message is stored twice.)
                sid = await self._publish(keys=[key], args=args)
        _raise_if_cancelled()
        return sid

    # --- sockets -------------------------------------------------------------

    async def serve(
        self,
        request: web.Request,
        user_id: int | str,
        *,
        on_message: Callable[[web.WebSocketResponse, Any], Awaitable[None]] | None = None,
    ) -> web.WebSocketResponse:
        """A complete ``/ws`` handler: upgrade, register, resume from ``?last_id=``, run until closed.

        Messages the client sends are passed to `on_message` (ignored without one).
        A malformed ``last_id`` / ``last_broadcast_id`` is a 400 before the upgrade.
        """
        resume = {kind: _query_id(request, name) for kind, name in _RESUME_PARAMS.items()}
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
        """Attach a prepared socket; missed messages after the given ids are replayed first."""
        if not ws.prepared or ws in self._by_ws:
            msg = "register() needs a prepared WebSocketResponse that is not registered yet"
            raise HubError(msg)
        resume_from: dict[Kind, StreamId | None] = {
            "u": _stream_id(last_id),
            "b": _stream_id(last_broadcast_id),
        }
        user = _user_key(user_id)
        sock = HubSocket(user=user, ws=ws, queue_size=self._queue_size, resume_from=resume_from)
        self._sockets.setdefault(user, set()).add(sock)
        self._by_ws[ws] = sock
        self.stats.sockets = len(self._by_ws)
        sock.writer = asyncio.create_task(self._write_loop(sock), name=f"hub-writer-{user}")

    async def unregister(self, user_id: int | str, ws: web.WebSocketResponse) -> None:
        """Detach a socket (it is not closed); unknown sockets are ignored."""
        sock = self._by_ws.get(ws)
        if sock is None or sock.user != _user_key(user_id):
            return
        self._detach(sock)
        if sock.writer is not None and sock.writer is not asyncio.current_task():
            sock.writer.cancel()
            await asyncio.gather(sock.writer, return_exceptions=True)

    def local_users(self) -> int:
        """How many users have at least one socket on this instance."""
        return len(self._sockets)

    def _detach(self, sock: HubSocket) -> None:
        if self._by_ws.pop(sock.ws, None) is None:
            return
        peers = self._sockets.get(sock.user)
        if peers is not None:
            peers.discard(sock)
            if not peers:
                del self._sockets[sock.user]
        self.stats.sockets = len(self._by_ws)

    def _offer(self, sock: HubSocket, kind: Kind, sid: StreamId | None, data: bytes) -> None:
        if not sock.offer(kind, sid, data):
            self._close_slow(sock)

    def _close_slow(self, sock: HubSocket) -> None:
        if sock.closing:
            return
        sock.closing = True
        self.stats.slow_consumers += 1
        logger.warning(
            "hub.slow_consumer_closed",
            extra={
                "user": sock.user,
                "queued": sock.queue.qsize(),
                "code": int(SLOW_CONSUMER_CLOSE),
            },
        )
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
            logger.debug("hub.close_incomplete", extra={"user": sock.user, "error": repr(exc)})

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- per-socket writer: replay, then live frames -----------------------------

    async def _write_loop(self, sock: HubSocket) -> None:
        try:
            await self._replay(sock)
            if not sock.end_resume():
                self._close_slow(sock)
                return
            while True:
                data = await sock.queue.get()
                async with asyncio.timeout(self._send_timeout):
                    await sock.ws.send_frame(data, WSMsgType.TEXT)
                self.stats.delivered += 1
        except TimeoutError:
            self._close_slow(sock)
        except ConnectionError:
            self._detach(sock)  # the peer is gone; serve() unregisters as well

    async def _replay(self, sock: HubSocket) -> None:
        """Send history after the client's ids, or set the cursors to the stream ends.

        Redis failing here is not fatal: the reconnect catch-up resumes from
        the cursors reached so far (or from the registration time).
        """
        for kind in KINDS:
            if not self.stats.redis_connected:
                return
            key = self._stream_key(kind, sock.user)
            cursor = sock.resume_from[kind]
            try:
                if cursor is None:
                    sock.tails[kind] = await self._tail(key)
                    continue
                page = await self._read_page(key, cursor)
            except _REDIS_ERRORS as exc:
                logger.warning("hub.replay_failed", extra={"user": sock.user, "error": repr(exc)})
                return
            while page:
                for sid, body in page:
                    async with asyncio.timeout(self._send_timeout):
                        await sock.ws.send_frame(
                            frame(kind, format_stream_id(sid), body), WSMsgType.TEXT
                        )
                    sock.cursors[kind] = sid
                    self.stats.replayed += 1
                if len(page) < _PAGE:
                    break
                try:
                    page = await self._read_page(key, page[-1][0])
                except _REDIS_ERRORS as exc:
                    logger.warning(
                        "hub.replay_failed", extra={"user": sock.user, "error": repr(exc)}
                    )
                    return

    async def _tail(self, key: str) -> StreamId:
        last: Any = await self._redis.xrevrange(key, count=1)
        _raise_if_cancelled()
        return _entry_id(last[0][0]) if last else (0, 0)

    async def _read_page(self, key: str, after: StreamId) -> list[tuple[StreamId, bytes]]:
        entries: Any = await self._redis.xrange(key, min=f"({format_stream_id(after)}", count=_PAGE)
        _raise_if_cancelled()
        page = []
        for raw_id, fields in entries:
            body = fields.get(b"m", fields.get("m", b"{}"))
            page.append((_entry_id(raw_id), body.encode() if isinstance(body, str) else body))
        return page

    def _stream_key(self, kind: Kind, user: str) -> str:
        return f"{self._prefix}:u:{user}" if kind == "u" else f"{self._prefix}:broadcast"

    # --- subscriber: live fan-out, reconnects, catch-up --------------------------

    async def _subscribe_loop(self) -> None:
        delay = self._reconnect_delay[0]
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(self._channel)
                _raise_if_cancelled()
                while True:
                    msg = await pubsub.get_message(timeout=1.0)
                    _raise_if_cancelled()
                    if msg is None:
                        continue
                    if msg["type"] == "subscribe":
                        # Also seen when redis-py reconnects and re-subscribes by itself.
                        await self._on_subscribed()
                        delay = self._reconnect_delay[0]
                    elif msg["type"] == "message":
                        self._on_message(msg["data"])
            except _REDIS_ERRORS as exc:
                self._on_lost(exc)
            finally:
                await _close_pubsub(pubsub)
            _raise_if_cancelled()
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # noqa: S311
            delay = min(delay * 2, self._reconnect_delay[1])

    async def _on_subscribed(self) -> None:
        if self._ever_subscribed:
            self.stats.redis_reconnects += 1
            logger.info("hub.redis_reconnected", extra={"channel": self._channel})
        self._ever_subscribed = True
        self.stats.redis_connected = True
        await self._catch_up()
        self._subscribed.set()

    def _on_lost(self, exc: BaseException) -> None:
        if self.stats.redis_connected:
            self.stats.redis_disconnects += 1
            logger.warning("hub.redis_lost", extra={"channel": self._channel, "error": repr(exc)})
        self.stats.redis_connected = False

    def _on_message(self, data: bytes | str) -> None:
        raw = data.encode() if isinstance(data, str) else data
        parts = raw.split(b"\n", 3)
        sid = (
            parse_stream_id(parts[2].decode(errors="replace"))
            if len(parts) == _FANOUT_PARTS
            else None
        )
        if sid is None or parts[0] not in {b"u", b"b"}:
            logger.warning("hub.bad_fanout_message", extra={"size": len(raw)})
            return
        kind_b, user_b, id_b, body = parts
        kind: Kind = "u" if kind_b == b"u" else "b"
        targets = self._sockets.get(user_b.decode(), ()) if kind == "u" else self._by_ws.values()
        if not targets:
            return
        data_frame = frame(kind, id_b.decode(), body)
        for sock in list(targets):
            self._offer(sock, kind, sid, data_frame)

    async def _catch_up(self) -> None:
        """After a (re)subscribe, replay what each local socket missed meanwhile.

        Runs inside the subscriber task, so live messages wait in the
        subscription buffer and arrive after the replay (the cursors drop repeats).
        """
        ready = [s for s in self._by_ws.values() if not s.resuming and not s.closing]
        groups: dict[str, list[HubSocket]] = {}
        for sock in ready:
            groups.setdefault(self._stream_key("u", sock.user), []).append(sock)
        if ready:
            groups[self._stream_key("b", "")] = ready
        for key, socks in groups.items():
            kind: Kind = "b" if key.endswith(":broadcast") else "u"
            after = min(s.catch_up_from(kind) for s in socks)
            while page := await self._read_page(key, after):
                for sid, body in page:
                    data = frame(kind, format_stream_id(sid), body)
                    for sock in socks:
                        self._offer(sock, kind, sid, data)
                after = page[-1][0]


_RESUME_PARAMS: Final[dict[Kind, str]] = {"u": "last_id", "b": "last_broadcast_id"}


def _raise_if_cancelled() -> None:
    # redis-py can swallow a cancellation that lands at the wrong moment: the
    # call returns normally with the task still marked as cancelling. Re-raise
    # it, or unregister()/stop() would wait forever for the task.
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _user_key(user_id: int | str) -> str:
    user = str(user_id)
    if isinstance(user_id, bool) or not _USER_RE.fullmatch(user):
        msg = f"user id must be an int or 1-128 of [A-Za-z0-9_.:@-], got {user_id!r}"
        raise HubError(msg)
    return user


def _encode(kind: Kind, message: object) -> bytes:
    if not isinstance(message, dict):
        msg = f"a hub message is a dict, got {type(message).__name__}"
        raise HubError(msg)
    id_key = "msg_id" if kind == "u" else "broadcast_id"
    if id_key in message:
        msg = f"{id_key!r} is set by the hub and cannot be a message key"
        raise HubError(msg)
    try:
        return orjson.dumps(message)
    except orjson.JSONEncodeError as exc:
        msg = f"message is not JSON-serialisable: {exc}"
        raise HubError(msg) from exc


def _stream_id(text: str | None) -> StreamId | None:
    if text is None:
        return None
    sid = parse_stream_id(text)
    if sid is None:
        msg = f"not a stream id: {text[:40]!r}"
        raise HubError(msg)
    return sid


def _entry_id(raw: bytes | str) -> StreamId:
    sid = parse_stream_id(raw.decode() if isinstance(raw, bytes) else raw)
    if sid is None:  # Redis always returns well-formed ids
        msg = f"Redis returned a malformed stream id {raw!r}"
        raise HubError(msg)
    return sid


def _query_id(request: web.Request, name: str) -> str | None:
    value = request.query.get(name)
    if value is not None and parse_stream_id(value) is None:
        raise web.HTTPBadRequest(text=f"{name} must be a stream id like 1700000000000-0")
    return value


async def _close_pubsub(pubsub: Any) -> None:
    try:
        await pubsub.aclose()
    except _REDIS_ERRORS as exc:
        logger.debug("hub.pubsub_close_failed", extra={"error": repr(exc)})
