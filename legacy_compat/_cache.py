"""A Redis cache that reads and writes the legacy Packager strings.

Values are stored exactly as club-api stores them (see `_packager`), so both
sides of the migration share one cache. A stored value that cannot be decoded
(corrupt, truncated, an unknown type, a gzip bomb, invalid UTF-8 under a
``decode_responses=True`` client) is logged as ``legacy_compat.cache.corrupt_value``,
counted in `Cache.stats`, deleted, and returned as a miss: it never reaches
the request. The delete is a compare-and-delete on the exact bytes read, so a
good value another writer stored in between survives. Redis connection
errors are not swallowed: the caller decides.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from redis.client import NEVER_DECODE

from legacy_compat._packager import Packager
from legacy_compat.errors import PackagerError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    import redis.asyncio as aioredis

__all__ = ["Cache", "CacheStats"]

logger = logging.getLogger(__name__)

_MISS: Final = object()
# Delete KEYS[1] only while it still holds ARGV[1] (the corrupt bytes we read).
_DELETE_IF_UNCHANGED: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(slots=True, kw_only=True)
class CacheStats:
    """Counters since the cache was created (read them; the cache updates them).

    Attributes:
        hits: reads that found and decoded a value.
        misses: reads that found nothing (corrupt values count here too).
        corrupt: values that failed to decode and were deleted.
    """

    hits: int = 0
    misses: int = 0
    corrupt: int = 0


class Cache:
    """Legacy-format cache over a `redis.asyncio.Redis` client.

    Works whether or not the client decodes responses. `get_or_set` runs the
    factory once per key at a time within this process (concurrent callers for
    the same key wait for the first one instead of stampeding the backend).
    """

    __slots__ = ("_delete_if_unchanged", "_inflight", "_packager", "_redis", "stats")

    def __init__(self, redis: aioredis.Redis, *, packager: Packager | None = None) -> None:
        self._redis = redis
        self._packager = packager or Packager()
        self._inflight: dict[str | bytes, asyncio.Future[Any]] = {}
        self._delete_if_unchanged = redis.register_script(_DELETE_IF_UNCHANGED)
        self.stats = CacheStats()

    @property
    def packager(self) -> Packager:
        return self._packager

    async def get(self, key: str | bytes, default: Any = None) -> Any:
        """The cached value, or `default` when absent or corrupt."""
        value = await self._read(key)
        return default if value is _MISS else value

    async def set(self, key: str | bytes, value: Any, *, ttl: float | None) -> None:
        """Store `value` (PackagerError if its type is not packable); `ttl` in seconds, None keeps it forever."""
        text = self._packager.pack(value)
        if ttl is None:
            await self._redis.set(key, text)
            return
        if ttl <= 0:
            msg = f"ttl must be positive or None, got {ttl!r}"
            raise ValueError(msg)
        # Milliseconds so sub-second TTLs work; never round a positive TTL down to 0.
        await self._redis.set(key, text, px=max(1, round(ttl * 1000)))

    async def delete(self, *keys: str | bytes) -> int:
        """Delete `keys`; the number that existed."""
        if not keys:
            return 0
        return int(await self._redis.delete(*keys))

    async def get_or_set(
        self, key: str | bytes, factory: Callable[[], Awaitable[Any]], *, ttl: float | None
    ) -> Any:
        """The cached value, or the factory's result (awaited, stored with `ttl`, returned)."""
        while True:
            value = await self._read(key)
            if value is not _MISS:
                return value
            pending = self._inflight.get(key)
            if pending is None:
                return await self._load(key, factory, ttl=ttl)
            # wait(), not await: a waiter's own cancellation must not cancel the shared load.
            await asyncio.wait([pending])
            if not pending.cancelled():
                return pending.result()
            # The loading caller was cancelled: try again (read, or load ourselves).

    async def _load(
        self, key: str | bytes, factory: Callable[[], Awaitable[Any]], *, ttl: float | None
    ) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            value = await factory()
            await self.set(key, value, ttl=ttl)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            future.set_exception(exc)
            # Waiters re-raise it; mark it retrieved so a future nobody waited for does not warn.
            future.exception()
            raise
        else:
            future.set_result(value)
            return value
        finally:
            del self._inflight[key]

    async def _read(self, key: str | bytes) -> Any:
        # Raw bytes whatever the client's decode_responses: a decoding client would
        # fail inside redis-py on non-UTF-8 values, and the compare-and-delete of a
        # corrupt value needs the exact bytes (the Packager decodes UTF-8 strictly).
        raw: bytes | None = await self._redis.execute_command(  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
            "GET", key, keys=[key], **{NEVER_DECODE: []}
        )
        if raw is None:
            self.stats.misses += 1
            return _MISS
        try:
            value = self._packager.unpack(raw)
        except PackagerError as exc:
            return await self._corrupt(key, raw, exc)
        self.stats.hits += 1
        return value

    async def _corrupt(self, key: str | bytes, raw: bytes, exc: Exception) -> object:
        self.stats.corrupt += 1
        self.stats.misses += 1
        logger.warning(
            "legacy_compat.cache.corrupt_value",
            extra={
                "key": key if isinstance(key, str) else key.decode(errors="replace"),
                "error": str(exc),
            },
        )
        await self._delete_if_unchanged(keys=[key], args=[raw])
        return _MISS
