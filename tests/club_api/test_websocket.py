"""GET /ws and the PgQueue callback: trigger NOTIFY -> legacy debounce -> the user's socket."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.club_api.conftest import ALICE, BORIS, CAROL

# Generous: the machine is shared; a condition is awaited, never a duration.
WAIT = 15.0


async def receive(ws: Any) -> Any:
    """The next JSON frame, failing the test if none comes."""
    return await asyncio.wait_for(ws.receive_json(), WAIT)


async def connect(client: Any, **kwargs: Any) -> Any:
    """A socket past its hello frame, so this instance has registered it."""
    ws = await client.ws_connect("/ws", **kwargs)
    hello = await receive(ws)
    assert hello["type"] == "hello"
    return ws


async def test_ws_hello_with_header_or_query_token(client) -> None:
    ws = await client.ws_connect("/ws", headers=ALICE)
    assert await receive(ws) == {"type": "hello", "user_id": 1}
    await ws.close()
    ws = await client.ws_connect("/ws?token=token-boris")
    assert await receive(ws) == {"type": "hello", "user_id": 2}
    await ws.close()


async def test_ws_ping_pong(client) -> None:
    ws = await connect(client, headers=ALICE)
    await ws.send_str("ping")
    assert await asyncio.wait_for(ws.receive_str(), WAIT) == "pong"
    await ws.close()


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({}, "authentication required"),
        ({"headers": {"Authorization": "Bearer nope"}}, "invalid token"),
        ({"headers": CAROL}, "invalid token"),
    ],
)
async def test_ws_needs_a_valid_token_before_the_upgrade(client, kwargs, error: str) -> None:
    resp = await client.get("/ws", **kwargs)
    assert resp.status == 401
    assert await resp.json() == {"error": error}


async def test_registration_via_api_notifies_the_users_socket(client) -> None:
    ws = await connect(client, headers=ALICE)
    assert (await client.post("/api/events/1/registrations", headers=ALICE)).status == 201
    assert await receive(ws) == {"type": "new_registration", "user_id": 1, "event_id": 1}
    assert (await client.delete("/api/events/1/registrations/me", headers=ALICE)).status == 204
    assert await receive(ws) == {"type": "registration_cancelled", "user_id": 1, "event_id": 1}
    await ws.close()


async def test_trigger_fires_for_raw_sql_and_reaches_only_the_right_user(client, db) -> None:
    alice = await connect(client, headers=ALICE)
    boris = await connect(client, headers=BORIS)
    # A write from outside the app (another service, a migration): the trigger still fires.
    await db.execute("INSERT INTO registrations (user_id, event_id) VALUES (2, 4)")
    assert await receive(boris) == {"type": "new_registration", "user_id": 2, "event_id": 4}
    # Events are routed in order, so if Alice had been sent Boris's event she
    # would see it before her own.
    await db.execute("INSERT INTO registrations (user_id, event_id) VALUES (1, 4)")
    assert await receive(alice) == {"type": "new_registration", "user_id": 1, "event_id": 4}
    await alice.close()
    await boris.close()


async def test_notification_reaches_every_socket_of_the_user(client, db) -> None:
    first = await connect(client, headers=ALICE)
    second = await connect(client, headers=ALICE)
    await db.execute("INSERT INTO registrations (user_id, event_id) VALUES (1, 4)")
    expected = {"type": "new_registration", "user_id": 1, "event_id": 4}
    assert await receive(first) == expected
    assert await receive(second) == expected
    await first.close()
    await second.close()


async def test_queue_callback_drops_the_cached_detail(client, db, redis_client) -> None:
    ws = await connect(client, headers=ALICE)
    await client.get("/api/events/4")
    assert await redis_client.exists("club:event:4") == 1
    # Written behind the app's back: only the NOTIFY tells the app.
    await db.execute("INSERT INTO registrations (user_id, event_id) VALUES (1, 4)")
    await receive(ws)  # the callback has run (it drops the entry before pushing)
    assert await redis_client.exists("club:event:4") == 0
    assert (await (await client.get("/api/events/4")).json())["registered"] == 1
    await ws.close()
