"""The hub's Redis side: the publish script, history reads, and the subscription loop.

Keys (``prefix`` defaults to ``club:ws``)::

    <prefix>:u:<user>     stream, one entry per message to that user (field m = JSON)
    <prefix>:broadcast    stream, one entry per broadcast
    <prefix>:events       Pub/Sub channel: "<kind>\\n<user>\\n<stream id>\\n<JSON>"

One Lua script appends to the stream and publishes, so the publish order on
the channel is the stream order, which is what lets a socket's cursor (the
last stream id it was sent) drop replayed/live overlaps.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import TYPE_CHECKING, Any, Final

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from legacy_compat._hub_socket import Kind, StreamId, format_stream_id, parse_stream_id
from legacy_compat.errors import HubError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    import redis.asyncio as aioredis

__all__ = ["REDIS_ERRORS", "HubRedis"]

logger = logging.getLogger(__name__)

REDIS_ERRORS: Final = (RedisError, OSError, TimeoutError)
PAGE: Final = 200
_PUBLISH_LUA: Final = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'm', ARGV[2])
if tonumber(ARGV[3]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
redis.call('PUBLISH', ARGV[4], ARGV[5] .. '\\n' .. id .. '\\n' .. ARGV[2])
return id
"""


class HubRedis:
    """Stream and channel operations of one hub, over the caller's Redis client."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        prefix: str,
        history: int,
        history_ttl: float,
        publish_timeout: float,
        reconnect_delay: tuple[float, float],
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self.channel = f"{prefix}:events"
        self._history = history
        self._history_ttl = int(history_ttl)
        self._publish_timeout = publish_timeout
        self._reconnect_delay = reconnect_delay
        self._script = redis.register_script(_PUBLISH_LUA)

    def stream_key(self, kind: Kind, user: str) -> str:
        return f"{self._prefix}:u:{user}" if kind == "u" else f"{self._prefix}:broadcast"

    async def publish(self, kind: Kind, user: str, body: bytes) -> str:
        """Store and publish one message; its stream id."""
        keys = [self.stream_key(kind, user)]
        args: list[Any] = [self._history, body, self._history_ttl, self.channel, f"{kind}\n{user}"]
        async with asyncio.timeout(self._publish_timeout):
            try:
                sid = await self._script(keys=keys, args=args)
            except RedisConnectionError:
                # A pooled connection that died with a Redis restart fails its
                # first command; retry once on a fresh one. (Should the first
                # attempt have reached Redis after all, the message is stored twice.)
                sid = await self._script(keys=keys, args=args)
        raise_if_cancelled()
        return sid.decode() if isinstance(sid, bytes) else str(sid)

    async def tail(self, key: str) -> StreamId:
        """The id of the newest entry, (0, 0) for an empty or missing stream."""
        last: Any = await self._redis.xrevrange(key, count=1)
        raise_if_cancelled()
        return entry_id(last[0][0]) if last else (0, 0)

    async def read_page(self, key: str, after: StreamId) -> list[tuple[StreamId, bytes]]:
        """Up to `PAGE` entries strictly after `after`, oldest first."""
        entries: Any = await self._redis.xrange(key, min=f"({format_stream_id(after)}", count=PAGE)
        raise_if_cancelled()
        page = []
        for raw_id, fields in entries:
            body = fields.get(b"m", fields.get("m", b"{}"))
            page.append((entry_id(raw_id), body.encode() if isinstance(body, str) else body))
        return page

    async def subscribe_forever(
        self,
        *,
        on_subscribed: Callable[[], Awaitable[None]],
        on_message: Callable[[bytes], None],
        on_lost: Callable[[BaseException], None],
    ) -> None:
        """Listen on the channel until cancelled, reconnecting with jittered backoff.

        `on_subscribed` runs on every (re)subscription, including the ones
        redis-py makes by itself after a dropped connection; messages wait in
        the subscription buffer while it runs.
        """
        delay = self._reconnect_delay[0]
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                raise_if_cancelled()
                while True:
                    msg = await pubsub.get_message(timeout=1.0)
                    raise_if_cancelled()
                    if msg is None:
                        continue
                    if msg["type"] == "subscribe":
                        await on_subscribed()
                        delay = self._reconnect_delay[0]
                    elif msg["type"] == "message":
                        data = msg["data"]
                        on_message(data.encode() if isinstance(data, str) else data)
            except REDIS_ERRORS as exc:
                on_lost(exc)
            finally:
                await _close_pubsub(pubsub)
            raise_if_cancelled()
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # noqa: S311
            delay = min(delay * 2, self._reconnect_delay[1])


def raise_if_cancelled() -> None:
    """Re-raise a cancellation that redis-py swallowed.

    A cancel landing at the wrong moment inside a redis-py call can make the
    call return normally with the task still marked as cancelling; without
    this, unregister()/stop() would wait forever for the task.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def entry_id(raw: bytes | str) -> StreamId:
    sid = parse_stream_id(raw.decode() if isinstance(raw, bytes) else raw)
    if sid is None:  # Redis always returns well-formed ids
        msg = f"Redis returned a malformed stream id {raw!r}"
        raise HubError(msg)
    return sid


async def _close_pubsub(pubsub: Any) -> None:
    try:
        await pubsub.aclose()
    except REDIS_ERRORS as exc:
        logger.debug("legacy_compat.hub.pubsub_close_failed", extra={"error": repr(exc)})
