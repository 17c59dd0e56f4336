"""StatsCollector: stable metric names, values read from the live stats objects."""

from __future__ import annotations

import asyncio
from dataclasses import fields
from typing import TYPE_CHECKING

import asyncpg
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from legacy_compat import (
    Cache,
    CacheStats,
    HubStats,
    PgQueue,
    QueueStats,
    StatsCollector,
    WebSocketHub,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    import redis.asyncio as aioredis

WAIT = 20.0


def _names(collector: StatsCollector) -> set[str]:
    return {family.name for family in collector.collect()}


async def _until(predicate: Callable[[], bool]) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), WAIT)


async def test_every_stats_field_is_exported_under_its_stable_name(
    redis_client: aioredis.Redis, pg_dsn: str
) -> None:
    collector = StatsCollector(
        cache=Cache(redis_client), hub=WebSocketHub(redis_client), queue=PgQueue(pg_dsn)
    )
    # Family names are without `_total`; a new stats field must be exported too.
    expected = {f"club_compat_cache_{f.name}" for f in fields(CacheStats)}
    expected |= {f"club_compat_hub_{f.name}" for f in fields(HubStats)}
    expected |= {f"club_compat_queue_{f.name}" for f in fields(QueueStats)}
    assert _names(collector) == expected
    assert {family.name for family in collector.describe()} == expected
    assert all(not family.samples for family in collector.describe())
    kinds = {family.name: family.type for family in collector.collect()}
    assert kinds["club_compat_hub_redis_connected"] == "gauge"
    assert kinds["club_compat_hub_sockets"] == "gauge"
    assert kinds["club_compat_cache_corrupt"] == "counter"


async def test_values_are_read_at_scrape_time(redis_client: aioredis.Redis, pg_dsn: str) -> None:
    cache = Cache(redis_client)
    hub = WebSocketHub(redis_client)
    registry = CollectorRegistry()
    registry.register(StatsCollector(cache=cache, hub=hub))
    assert registry.get_sample_value("club_compat_cache_corrupt_total") == 0.0
    # A real corrupt value, read through the cache.
    await redis_client.set("k", "json:gzip:not-base64!")
    assert await cache.get("k") is None
    # The hub's counters are its own (its tests drive them); here: what is exported.
    hub.stats.redis_reconnects = 2
    hub.stats.redis_connected = True
    assert registry.get_sample_value("club_compat_cache_corrupt_total") == 1.0
    assert registry.get_sample_value("club_compat_cache_misses_total") == 1.0
    assert registry.get_sample_value("club_compat_hub_redis_reconnects_total") == 2.0
    assert registry.get_sample_value("club_compat_hub_redis_connected") == 1.0
    text = generate_latest(registry).decode()
    assert "# TYPE club_compat_cache_corrupt_total counter\n" in text
    assert "club_compat_cache_corrupt_total 1.0\n" in text
    # Only the parts given are exported.
    assert registry.get_sample_value("club_compat_queue_bad_payloads_total") is None


async def test_bad_queue_payloads_are_counted(pg_dsn: str) -> None:
    registry = CollectorRegistry()
    async with PgQueue(pg_dsn, window=0.05) as queue:
        registry.register(StatsCollector(queue=queue))
        conn = await asyncpg.connect(pg_dsn)
        try:
            await conn.execute("SELECT pg_notify('events', 'not json')")
        finally:
            await conn.close()
        await _until(
            lambda: registry.get_sample_value("club_compat_queue_bad_payloads_total") == 1.0
        )
        assert registry.get_sample_value("club_compat_queue_connects_total") == 1.0


def test_a_second_collector_in_one_registry_is_refused(redis_client: aioredis.Redis) -> None:
    registry = CollectorRegistry()
    registry.register(StatsCollector(cache=Cache(redis_client)))
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        registry.register(StatsCollector(cache=Cache(redis_client)))
