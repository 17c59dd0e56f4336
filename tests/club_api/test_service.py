"""GET /health, GET /api/stats, and the legacy error shape for unknown routes."""

from __future__ import annotations


async def test_health(client) -> None:
    resp = await client.get("/health")
    assert resp.status == 200
    assert await resp.json() == {"status": "ok", "service": "club-api", "version": "1.0.0"}


async def test_stats_counts(client, db) -> None:
    resp = await client.get("/api/stats")
    assert resp.status == 200
    assert await resp.json() == {
        "users": 3,
        "active_users": 2,
        "events": 4,
        "active_events": 3,
        "registrations": 1,
    }
    await db.execute("INSERT INTO registrations (user_id, event_id) VALUES (1, 4)")
    assert (await (await client.get("/api/stats")).json())["registrations"] == 2


async def test_unknown_path_is_a_legacy_404(client) -> None:
    resp = await client.get("/api/nothing-here")
    assert resp.status == 404
    assert await resp.json() == {"error": "not found"}


async def test_wrong_method_is_a_legacy_405(client) -> None:
    resp = await client.put("/api/users/1")
    assert resp.status == 405
    assert resp.headers["Allow"] == "GET,HEAD"
    assert await resp.json() == {"error": "method not allowed"}
