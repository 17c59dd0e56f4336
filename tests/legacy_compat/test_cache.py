"""Cache over a real Redis: legacy strings on the wire, corrupt values are misses."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import pytest
import redis
import redis.asyncio as aioredis

from legacy_compat import Cache, Packager, PackagerError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

INVALID = json.loads(
    (Path(__file__).parent.parent / "fixtures" / "legacy" / "packager_vectors.json").read_text(
        encoding="utf-8"
    )
)["invalid"]


@pytest.fixture(params=[False, True], ids=["bytes-client", "decoding-client"])
async def client(
    request: pytest.FixtureRequest, redis_client: aioredis.Redis, redis_url: str
) -> AsyncIterator[aioredis.Redis]:
    """The flushed test database, through a client with or without decode_responses."""
    if not request.param:
        yield redis_client
        return
    decoding = aioredis.from_url(redis_url, decode_responses=True)
    yield decoding
    await decoding.aclose()


@pytest.mark.parametrize(
    "value",
    [None, True, 0, -7, 2.5, "héllo", b"\x00\xff", {"a": [1, 2]}, {"big": "x" * 5000}],
    ids=repr,
)
async def test_set_get_round_trip_stores_the_legacy_string(
    client: aioredis.Redis, redis_client: aioredis.Redis, value: Any
) -> None:
    cache = Cache(client)
    await cache.set("k", value, ttl=None)
    assert await cache.get("k", default="absent") == value
    # On the wire: exactly what the Packager (and so club-api) writes.
    raw = await redis_client.get("k")
    assert isinstance(raw, bytes)
    assert raw.decode() == Packager().pack(value)
    assert cache.stats.hits == 1


async def test_reads_a_value_written_by_the_legacy_side(client: aioredis.Redis) -> None:
    event = {"type": "new_registration", "user_id": 123}
    legacy = "json:gzip:" + base64.b64encode(gzip.compress(orjson.dumps(event))).decode()
    await client.set("club:event:1", legacy)
    assert await Cache(client).get("club:event:1") == event


async def test_missing_key_returns_default(client: aioredis.Redis) -> None:
    cache = Cache(client)
    assert await cache.get("nope") is None
    assert await cache.get("nope", default=42) == 42
    assert cache.stats.misses == 2
    assert cache.stats.corrupt == 0


async def test_ttl(client: aioredis.Redis) -> None:
    cache = Cache(client)
    await cache.set("forever", 1, ttl=None)
    await cache.set("hour", 1, ttl=3600)
    await cache.set("brief", 1, ttl=0.05)
    assert await client.pttl("forever") == -1
    assert 0 < await client.pttl("hour") <= 3_600_000

    async def expired() -> None:
        while await cache.get("brief") is not None:
            await asyncio.sleep(0.02)

    await asyncio.wait_for(expired(), timeout=10)


@pytest.mark.parametrize("ttl", [0, -1.0])
async def test_non_positive_ttl_is_refused(client: aioredis.Redis, ttl: float) -> None:
    with pytest.raises(ValueError, match="ttl"):
        await Cache(client).set("k", 1, ttl=ttl)
    assert await client.exists("k") == 0


async def test_unpackable_value_is_refused_and_nothing_written(client: aioredis.Redis) -> None:
    with pytest.raises(PackagerError):
        await Cache(client).set("k", object(), ttl=None)
    assert await client.exists("k") == 0


async def test_delete(client: aioredis.Redis) -> None:
    cache = Cache(client)
    await cache.set("a", 1, ttl=None)
    await cache.set("b", 2, ttl=None)
    assert await cache.delete("a", "b", "c") == 2
    assert await cache.delete() == 0
    assert await cache.get("a") is None


@pytest.mark.parametrize(
    "vector",
    [v for v in INVALID if v["name"] != "empty"],
    ids=lambda v: v["name"],
)
async def test_corrupt_value_is_logged_counted_deleted_and_a_miss(
    client: aioredis.Redis, vector: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    await client.set("bad", vector["packed"])
    cache = Cache(client, packager=Packager(max_decoded_size=16 * 1024 * 1024))
    with caplog.at_level(logging.WARNING, logger="legacy_compat._cache"):
        assert await cache.get("bad", default="miss") == "miss"
    assert cache.stats.corrupt == 1
    assert await client.exists("bad") == 0
    [record] = [r for r in caplog.records if r.getMessage() == "legacy_compat.cache.corrupt_value"]
    assert record.__dict__["key"] == "bad"


async def test_empty_string_is_corrupt(client: aioredis.Redis) -> None:
    await client.set("bad", "")
    cache = Cache(client)
    assert await cache.get("bad") is None
    assert cache.stats.corrupt == 1


async def test_non_utf8_bytes_under_a_decoding_client(
    redis_client: aioredis.Redis, redis_url: str
) -> None:
    # redis-py itself fails to decode these bytes; the cache still sees a miss.
    await redis_client.set("bad", b"json:plain:\xff\xfe")
    decoding = aioredis.from_url(redis_url, decode_responses=True)
    try:
        cache = Cache(decoding)
        assert await cache.get("bad", default="miss") == "miss"
        assert cache.stats.corrupt == 1
        assert await redis_client.exists("bad") == 0
        # The client is still usable afterwards.
        await cache.set("good", "ok", ttl=None)
        assert await cache.get("good") == "ok"
    finally:
        await decoding.aclose()


class RacingPackager(Packager):
    """A Packager that, when a value fails to decode, has another writer store a good one.

    The write goes through a separate (blocking) client to the same server, so it
    lands between the cache's GET and its delete, like a concurrent `set`.
    """

    __slots__ = ("_key", "_writer")

    def __init__(self, writer: redis.Redis, key: str) -> None:
        super().__init__()
        self._writer = writer
        self._key = key

    def unpack(self, text: str | bytes) -> Any:
        try:
            return super().unpack(text)
        except PackagerError:
            self._writer.set(self._key, self.pack("fresh"))
            raise


@pytest.mark.parametrize(
    "corrupt",
    [b"json:gzip:not-base64!", b"json:plain:\xff\xfe"],
    ids=["bad-base64", "non-utf8"],
)
async def test_corrupt_value_replaced_meanwhile_is_not_deleted(
    client: aioredis.Redis, redis_url: str, corrupt: bytes
) -> None:
    await client.set("k", corrupt)
    writer = redis.Redis.from_url(redis_url)
    try:
        cache = Cache(client, packager=RacingPackager(writer, "k"))
        assert await cache.get("k", default="miss") == "miss"
        assert cache.stats.corrupt == 1
        # The good value written after our read survives the corrupt value's delete.
        assert await cache.get("k") == "fresh"
        assert cache.stats.hits == 1
    finally:
        writer.close()


async def until(predicate: Callable[[], bool]) -> None:
    """Wait (generously) until `predicate()` holds."""

    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout=10)


async def test_get_or_set_loads_once_then_hits(client: aioredis.Redis) -> None:
    cache = Cache(client)
    calls = 0

    async def load() -> dict[str, int]:
        nonlocal calls
        calls += 1
        return {"n": calls}

    assert await cache.get_or_set("k", load, ttl=60) == {"n": 1}
    assert await cache.get_or_set("k", load, ttl=60) == {"n": 1}
    assert calls == 1
    assert 0 < await client.pttl("k") <= 60_000


async def test_get_or_set_caches_none(client: aioredis.Redis) -> None:
    cache = Cache(client)
    calls = 0

    async def load() -> None:
        nonlocal calls
        calls += 1

    assert await cache.get_or_set("k", load, ttl=None) is None
    assert await cache.get_or_set("k", load, ttl=None) is None
    assert calls == 1


async def test_get_or_set_replaces_a_corrupt_value(client: aioredis.Redis) -> None:
    await client.set("k", "json:gzip:not-base64!")
    cache = Cache(client)

    async def load() -> str:
        return "fresh"

    assert await cache.get_or_set("k", load, ttl=None) == "fresh"
    assert cache.stats.corrupt == 1
    assert await cache.get("k") == "fresh"


async def test_get_or_set_single_flight(client: aioredis.Redis) -> None:
    cache = Cache(client)
    calls = 0
    release = asyncio.Event()

    async def load() -> int:
        nonlocal calls
        calls += 1
        await release.wait()
        return 7

    tasks = [asyncio.create_task(cache.get_or_set("k", load, ttl=None)) for _ in range(10)]

    async def all_waiting() -> None:
        while calls == 0:
            await asyncio.sleep(0.01)

    await asyncio.wait_for(all_waiting(), timeout=10)
    release.set()
    assert await asyncio.wait_for(asyncio.gather(*tasks), timeout=10) == [7] * 10
    assert calls == 1


async def test_get_or_set_error_reaches_every_waiter_and_nothing_is_stored(
    client: aioredis.Redis,
) -> None:
    cache = Cache(client)
    release = asyncio.Event()
    calls = 0

    async def load() -> int:
        nonlocal calls
        calls += 1
        await release.wait()
        msg = "backend down"
        raise RuntimeError(msg)

    first = asyncio.create_task(cache.get_or_set("k", load, ttl=None))
    await until(lambda: "k" in cache._inflight)
    second = asyncio.create_task(cache.get_or_set("k", load, ttl=None))
    # The second caller's miss and its joining the pending load happen in one step
    # (no await between them), so its miss being counted means it is waiting.
    await until(lambda: cache.stats.misses == 2)
    release.set()
    results = await asyncio.wait_for(
        asyncio.gather(first, second, return_exceptions=True), timeout=10
    )
    assert [str(r) for r in results] == ["backend down", "backend down"]
    assert calls == 1  # the second caller got the first one's error, not its own
    assert await client.exists("k") == 0
    assert not cache._inflight


async def test_get_or_set_waiter_takes_over_when_the_loader_is_cancelled(
    client: aioredis.Redis,
) -> None:
    cache = Cache(client)
    started = asyncio.Event()

    async def hang() -> int:
        started.set()
        await asyncio.Event().wait()
        return 0

    async def load() -> int:
        return 5

    first = asyncio.create_task(cache.get_or_set("k", hang, ttl=None))
    await asyncio.wait_for(started.wait(), timeout=10)
    second = asyncio.create_task(cache.get_or_set("k", load, ttl=None))
    # Its miss counted means it is waiting on the first load (see the test above).
    await until(lambda: cache.stats.misses == 2)
    first.cancel()
    assert await asyncio.wait_for(second, timeout=10) == 5
    with pytest.raises(asyncio.CancelledError):
        await first
    # Three misses: both first reads, then the waiter's read after the takeover.
    assert cache.stats.misses == 3
