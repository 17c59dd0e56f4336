"""GET /api/events and GET /api/events/{id}, including the Redis cache."""

from __future__ import annotations

import time

import pytest

from legacy_compat import Packager
from tests.club_api.conftest import ALICE, PADEL_STARTS, UPDATED

PADEL = {
    "id": 1,
    "title": "Open padel",
    "meta": {"tags": ["open"], "venue": {"name": "North Court"}},
    "starts_at": PADEL_STARTS,  # a naive timestamp, read as UTC wall clock
    "capacity": 2,
    "active": True,
    "updated_at": UPDATED,
}


async def test_list_events(client) -> None:
    before = int(time.time())
    resp = await client.get("/api/events")
    assert resp.status == 200
    body = await resp.json()
    assert list(body) == ["items", "total", "limit", "offset", "generated_at"]
    assert [e["id"] for e in body["items"]] == [1, 2, 3, 4]
    assert body["items"][0] == PADEL
    assert (body["total"], body["limit"], body["offset"]) == (4, 20, 0)
    assert body["generated_at"] >= before


async def test_list_events_active_and_paged(client) -> None:
    body = await (await client.get("/api/events?active=true&limit=2&offset=1")).json()
    assert [e["id"] for e in body["items"]] == [3, 4]
    assert body["total"] == 3


async def test_list_events_invalid_query(client) -> None:
    resp = await client.get("/api/events?limit=500")
    assert resp.status == 400
    assert await resp.json() == {"error": "invalid limit: must be an integer from 1 to 100"}


async def test_event_detail(client) -> None:
    resp = await client.get("/api/events/3")
    assert resp.status == 200
    body = await resp.json()
    assert list(body)[-2:] == ["registered", "spots_left"]
    assert (body["capacity"], body["registered"], body["spots_left"]) == (1, 1, 0)
    assert (await (await client.get("/api/events/1")).json()) == {
        **PADEL,
        "registered": 0,
        "spots_left": 2,
    }


async def test_event_detail_not_found_is_not_cached(client, redis_client) -> None:
    resp = await client.get("/api/events/99")
    assert resp.status == 404
    assert await resp.json() == {"error": "event not found"}
    assert await redis_client.exists("club:event:99") == 0


async def test_event_detail_invalid_id(client) -> None:
    resp = await client.get("/api/events/x1")
    assert resp.status == 400
    assert await resp.json() == {"error": "invalid id"}


async def test_event_detail_is_cached_in_packager_format_with_ttl(client, redis_client) -> None:
    first = await (await client.get("/api/events/1")).json()
    raw = await redis_client.get("club:event:1")
    assert raw is not None
    # The legacy Packager string, which a plain Redis client cannot read as JSON.
    assert raw.startswith(b"json:")
    assert Packager().unpack(raw) == first
    ttl_ms = await redis_client.pttl("club:event:1")
    assert 0 < ttl_ms <= 60_000


async def test_second_read_is_served_from_the_cache(client, db) -> None:
    first = await (await client.get("/api/events/1")).json()
    # Change the row behind the cache's back: the cached answer must still come back.
    await db.execute("UPDATE events SET title = 'Renamed padel' WHERE id = 1")
    second = await (await client.get("/api/events/1")).json()
    assert second == first
    assert second["title"] == "Open padel"


async def test_registration_changes_invalidate_the_cache(client, db) -> None:
    await client.get("/api/events/1")
    await db.execute("UPDATE events SET title = 'Renamed padel' WHERE id = 1")
    assert (await (await client.get("/api/events/1")).json())["title"] == "Open padel"

    created = await client.post("/api/events/1/registrations", headers=ALICE)
    assert created.status == 201
    after_create = await (await client.get("/api/events/1")).json()
    assert (after_create["title"], after_create["registered"]) == ("Renamed padel", 1)

    await db.execute("UPDATE events SET title = 'Padel again' WHERE id = 1")
    deleted = await client.delete("/api/events/1/registrations/me", headers=ALICE)
    assert deleted.status == 204
    after_delete = await (await client.get("/api/events/1")).json()
    assert (after_delete["title"], after_delete["registered"]) == ("Padel again", 0)


@pytest.mark.parametrize("corrupt", [b"json:gzip:not-base64!", b"\xff\xfe", b"pickle:plain:x"])
async def test_corrupt_cache_value_is_a_miss(client, redis_client, corrupt: bytes) -> None:
    await redis_client.set("club:event:1", corrupt)
    resp = await client.get("/api/events/1")
    assert resp.status == 200
    assert (await resp.json())["title"] == "Open padel"
    raw = await redis_client.get("club:event:1")
    assert raw is not None
    assert raw.startswith(b"json:")
