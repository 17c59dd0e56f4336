"""new_services' cache, hub and queue counters on the proxy's admin /-/metrics.

The proxy runs the repository's routes.yaml with new_services in-process; the
new app registers its StatsCollector in prometheus-client's default REGISTRY,
which the admin endpoint renders after the proxy's own registry.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import asyncpg
from aiohttp import web
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from proxy.serving.admin import create_admin_app
from tests.new_services.test_through_proxy import start_walk

if TYPE_CHECKING:
    from pathlib import Path

    import redis.asyncio as aioredis
    from aiohttp.test_utils import TestClient

WAIT = 20.0
CORRUPT = "club_compat_cache_corrupt_total"
BAD_PAYLOADS = "club_compat_queue_bad_payloads_total"


async def scrape(admin: TestClient[Any, Any]) -> dict[str, float]:
    """Every unlabelled sample on /-/metrics, by name (a name twice is a failure)."""
    async with admin.get("/-/metrics") as response:
        assert response.status == 200
        text = await response.text()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.labels:
                assert sample.name not in samples, sample.name
                samples[sample.name] = sample.value
    return samples


async def test_new_services_counters_show_on_the_proxy_metrics(  # noqa: PLR0917  (fixtures)
    tmp_path: Path,
    pg_dsn: str,
    redis_url: str,
    redis_client: aioredis.Redis,
    aiohttp_server: Any,
    aiohttp_client: Any,
) -> None:
    proxy, _direct = await start_walk(
        tmp_path, pg_dsn, redis_url, aiohttp_server, aiohttp_client, move={}, new_url=False
    )
    assert isinstance(proxy.app, web.Application)
    admin = await aiohttp_client(create_admin_app(proxy.app))
    before = await scrape(admin)
    assert (before[CORRUPT], before[BAD_PAYLOADS]) == (0.0, 0.0)
    # The process-wide metrics come along (the default registry's collectors).
    assert "process_cpu_seconds_total" in before

    # A corrupt value under the key new_services reads for GET /api/events/1 (to: new).
    await redis_client.set("club:event:1", b"json:gzip:not-base64!")
    async with proxy.get("/api/events/1") as response:
        assert response.status == 200
        assert (await response.json())["id"] == 1
    assert (await scrape(admin))[CORRUPT] == 1.0

    # A bad trigger payload reaches new_services' PgQueue and is counted.
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute("SELECT pg_notify('events', 'not json')")
    finally:
        await conn.close()

    async def counted() -> None:
        while (await scrape(admin))[BAD_PAYLOADS] != 1.0:
            await asyncio.sleep(0.05)

    await asyncio.wait_for(counted(), WAIT)

    # Cleanup of the new app takes its collector out of the default registry.
    await proxy.close()
    assert REGISTRY.get_sample_value(CORRUPT) is None
