"""Both sides on one cache and one event stream: what one writes, the other reads.

- Cache: a value cached by one side is served by the other (same key, same
  Packager bytes), and a write on either side drops what the other cached.
- Events: a write through new_services reaches a legacy PgQueue listener
  (the table trigger), and a write through club-api reaches new_services'
  sockets; frames are byte-identical to club-api's.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import asyncpg
import pytest
from aiohttp import WSMsgType

from examples.club_api.app import create_app as create_legacy_app
from legacy_compat import DebounceMode, Event, Packager, PgQueue
from new_services.app import create_app as create_new_app
from tests.club_api.conftest import club_settings
from tests.new_services.conftest import Twins, wait_for

if TYPE_CHECKING:
    from collections.abc import Sequence

    import redis.asyncio as aioredis

U1 = {"Authorization": "Bearer seed-token-1"}
U2 = {"Authorization": "Bearer seed-token-2"}


async def _execute(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.mark.parametrize("event_id", [1, 1001], ids=["small", "gzip"])
async def test_cache_written_by_either_side_is_the_same_bytes(
    twins: Twins, redis_client: aioredis.Redis, event_id: int
) -> None:
    key = f"club:event:{event_id}"
    await twins.clear_cache()
    legacy_body = await (await twins.legacy.get(f"/api/events/{event_id}")).read()
    legacy_raw = await redis_client.get(key)
    await twins.clear_cache()
    new_body = await (await twins.new.get(f"/api/events/{event_id}")).read()
    new_raw = await redis_client.get(key)
    assert isinstance(legacy_raw, bytes)
    assert legacy_raw == new_raw
    assert legacy_body == new_body
    assert legacy_raw.startswith(b"json:gzip:" if event_id == 1001 else b"json:plain:")


async def test_each_side_serves_what_the_other_cached(twins: Twins) -> None:
    legacy_dsn, new_dsn = twins.dsns
    await twins.clear_cache()
    first = await (await twins.legacy.get("/api/events/2")).json()
    # Change the row behind the new side's back: only a cache hit still shows the old title.
    await _execute(new_dsn, "UPDATE events SET title = 'changed' WHERE id = 2")
    assert await (await twins.new.get("/api/events/2")).json() == first
    await twins.clear_cache()
    assert (await (await twins.new.get("/api/events/2")).json())["title"] == "changed"
    await _execute(legacy_dsn, "UPDATE events SET title = 'legacy changed' WHERE id = 2")
    assert (await (await twins.legacy.get("/api/events/2")).json())["title"] == "changed"


async def test_corrupt_cache_value_is_a_miss_on_the_new_side(twins: Twins, redis_client) -> None:
    await redis_client.set("club:event:1", b"json:gzip:not-base64!!")
    new = await twins.new.get("/api/events/1")
    assert new.status == 200
    assert Packager().unpack(await redis_client.get("club:event:1")) == await new.json()


@pytest.fixture
async def shared(pg_dsn, redis_url, redis_client, aiohttp_client) -> tuple[Any, Any, str]:
    """club-api and new_services on ONE database (seeded users 1..3, event 1)."""
    await _execute(
        pg_dsn,
        """
        INSERT INTO users (id, name, email) VALUES (1, 'A', 'a@x'), (2, 'B', 'b@x');
        INSERT INTO sessions (token, user_id) VALUES ('seed-token-1', 1), ('seed-token-2', 2);
        INSERT INTO events (id, title, starts_at, capacity) VALUES
          (1, 'E1', '2026-01-01 10:00', 5), (2, 'E2', '2026-01-02 10:00', 5);
        """,
    )
    settings = club_settings(pg_dsn, redis_url)
    legacy = await aiohttp_client(create_legacy_app(settings))
    new = await aiohttp_client(create_new_app(settings))
    return legacy, new, pg_dsn


async def test_new_write_reaches_a_legacy_pgqueue_listener(shared) -> None:
    _legacy, new, dsn = shared
    seen: list[Event] = []

    async def collect(events: Sequence[Event]) -> None:
        seen.extend(events)

    queue = PgQueue(dsn, channel="events", mode=DebounceMode.LEGACY, window=0.0)
    queue.on_any(collect)
    async with queue:
        assert (await new.post("/api/events/1/registrations", headers=U2)).status == 201
        assert (await new.delete("/api/events/1/registrations/me", headers=U2)).status == 204

        async def both_seen() -> bool:
            return len(seen) >= 2

        await wait_for(both_seen)
    assert [(e.type, e.payload) for e in seen] == [
        ("new_registration", {"type": "new_registration", "user_id": 2, "event_id": 1}),
        ("registration_cancelled", {"type": "registration_cancelled", "user_id": 2, "event_id": 1}),
    ]


async def _next_text(ws: Any) -> str:
    msg = await asyncio.wait_for(ws.receive(), 20)
    assert msg.type is WSMsgType.TEXT, msg
    return str(msg.data)


async def test_writes_on_either_side_reach_sockets_on_both(shared) -> None:
    legacy, new, _dsn = shared
    async with (
        legacy.ws_connect("/ws?token=seed-token-2") as legacy_ws,
        new.ws_connect("/ws", headers=U2) as new_ws,
    ):
        assert await _next_text(legacy_ws) == await _next_text(new_ws)  # hello
        # A legacy write reaches the new socket, a new write the legacy one.
        assert (await legacy.post("/api/events/1/registrations", headers=U2)).status == 201
        legacy_frame = await _next_text(legacy_ws)
        assert await _next_text(new_ws) == legacy_frame
        assert legacy_frame == '{"type": "new_registration", "user_id": 2, "event_id": 1}'
        assert (await new.post("/api/events/2/registrations", headers=U2)).status == 201
        assert await _next_text(legacy_ws) == await _next_text(new_ws)


async def test_a_write_on_either_side_drops_the_other_sides_cached_detail(
    shared, redis_client
) -> None:
    legacy, new, _dsn = shared
    await legacy.get("/api/events/1")
    assert await redis_client.exists("club:event:1") == 1
    assert (await new.post("/api/events/1/registrations", headers=U1)).status == 201
    assert await redis_client.exists("club:event:1") == 0
    assert (await (await new.get("/api/events/1")).json())["registered"] == 1
    assert await redis_client.exists("club:event:1") == 1
    assert (await legacy.delete("/api/events/1/registrations/me", headers=U1)).status == 204
    assert await redis_client.exists("club:event:1") == 0
    assert (await (await legacy.get("/api/events/1")).json())["registered"] == 0
