"""POST /api/events/{id}/registrations and DELETE /api/events/{id}/registrations/me."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.club_api.conftest import ALICE, BORIS, CAROL, EXPIRED


async def test_register(client, db) -> None:
    before = int(time.time())
    resp = await client.post("/api/events/1/registrations", headers=ALICE)
    assert resp.status == 201
    body = await resp.json()
    assert list(body) == ["id", "user_id", "event_id", "created_at"]
    assert (body["id"], body["user_id"], body["event_id"]) == (2, 1, 1)
    assert isinstance(body["created_at"], int)
    assert body["created_at"] >= before - 1
    assert await db.fetchval("SELECT count(*) FROM registrations WHERE event_id = 1") == 1


async def test_register_twice_is_409(client) -> None:
    assert (await client.post("/api/events/1/registrations", headers=ALICE)).status == 201
    resp = await client.post("/api/events/1/registrations", headers=ALICE)
    assert resp.status == 409
    assert await resp.json() == {"error": "already registered"}


async def test_register_full_event_is_422(client) -> None:
    resp = await client.post("/api/events/3/registrations", headers=ALICE)
    assert resp.status == 422
    assert await resp.json() == {"error": "event is full"}


async def test_already_registered_wins_over_full(client) -> None:
    # Boris holds the only place of event 3: he is told 409, not 422.
    resp = await client.post("/api/events/3/registrations", headers=BORIS)
    assert resp.status == 409


async def test_register_inactive_event_is_422(client) -> None:
    resp = await client.post("/api/events/2/registrations", headers=ALICE)
    assert resp.status == 422
    assert await resp.json() == {"error": "event is not active"}


async def test_register_unknown_event_is_404(client) -> None:
    resp = await client.post("/api/events/77/registrations", headers=ALICE)
    assert resp.status == 404
    assert await resp.json() == {"error": "event not found"}


async def test_register_invalid_event_id_is_400(client) -> None:
    resp = await client.post("/api/events/first/registrations", headers=ALICE)
    assert resp.status == 400
    assert await resp.json() == {"error": "invalid id"}


@pytest.mark.parametrize(
    ("headers", "error"),
    [
        ({}, "authentication required"),  # no header
        ({"Authorization": "Basic YTpi"}, "authentication required"),  # not a bearer token
        ({"Authorization": "Bearer"}, "authentication required"),  # empty token
        ({"Authorization": "Bearer nope"}, "invalid token"),  # unknown token
        (EXPIRED, "invalid token"),  # expired session
        (CAROL, "invalid token"),  # session of an inactive user
    ],
)
async def test_register_needs_a_valid_token(client, headers, error: str) -> None:
    resp = await client.post("/api/events/1/registrations", headers=headers)
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == "Bearer"
    assert await resp.json() == {"error": error}


async def test_authentication_is_checked_before_the_id(client) -> None:
    resp = await client.post("/api/events/first/registrations")
    assert resp.status == 401


async def test_last_place_goes_to_exactly_one_of_two_concurrent_requests(client, db) -> None:
    await db.execute("UPDATE events SET capacity = 1 WHERE id = 1")
    first, second = await asyncio.gather(
        client.post("/api/events/1/registrations", headers=ALICE),
        client.post("/api/events/1/registrations", headers=BORIS),
    )
    assert sorted([first.status, second.status]) == [201, 422]
    assert await db.fetchval("SELECT count(*) FROM registrations WHERE event_id = 1") == 1


async def test_cancel(client, db) -> None:
    resp = await client.delete("/api/events/3/registrations/me", headers=BORIS)
    assert resp.status == 204
    assert await resp.read() == b""
    assert await db.fetchval("SELECT count(*) FROM registrations WHERE event_id = 3") == 0


async def test_cancel_without_registration_is_404(client) -> None:
    resp = await client.delete("/api/events/3/registrations/me", headers=ALICE)
    assert resp.status == 404
    assert await resp.json() == {"error": "registration not found"}


async def test_cancel_unknown_event_is_404(client) -> None:
    resp = await client.delete("/api/events/77/registrations/me", headers=ALICE)
    assert resp.status == 404
    assert await resp.json() == {"error": "event not found"}


async def test_cancel_needs_a_token(client) -> None:
    resp = await client.delete("/api/events/3/registrations/me")
    assert resp.status == 401
    assert await resp.json() == {"error": "authentication required"}


async def test_cancel_then_register_again(client) -> None:
    assert (await client.delete("/api/events/3/registrations/me", headers=BORIS)).status == 204
    assert (await client.post("/api/events/3/registrations", headers=ALICE)).status == 201
