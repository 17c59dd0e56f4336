"""The multi-instance flaw, kept on purpose, and why legacy_compat.WebSocketHub exists.

club-api keeps live sockets in process memory (`store['websockets']`). Run two
instances behind a load balancer and a direct message handled by instance B
for a user whose socket is on instance A is silently lost: B does not know
the socket exists. (Database events are not lost: every instance LISTENs on
channel `events`, so A routes those itself.) The hub publishes messages
through Redis so every instance delivers to its own sockets.
"""

from __future__ import annotations

import asyncio

from examples.club_api.app import create_app
from tests.club_api.conftest import ALICE, BORIS

WAIT = 15.0


async def test_direct_message_posted_to_the_other_instance_is_lost(
    settings, redis_client, aiohttp_client
) -> None:
    instance_a = await aiohttp_client(create_app(settings))
    instance_b = await aiohttp_client(create_app(settings))
    boris_on_a = await instance_a.ws_connect("/ws", headers=BORIS)
    assert (await asyncio.wait_for(boris_on_a.receive_json(), WAIT))["type"] == "hello"

    lost = await instance_b.post("/api/users/2/messages", headers=ALICE, json={"text": "via B"})
    assert lost.status == 202
    assert await lost.json() == {"delivered": 0}  # B has no socket for Boris

    # Proof the B message never reaches the socket: the next frame Boris gets is
    # the message sent afterwards through A, not the one sent through B.
    sent = await instance_a.post("/api/users/2/messages", headers=ALICE, json={"text": "via A"})
    assert await sent.json() == {"delivered": 1}
    frame = await asyncio.wait_for(boris_on_a.receive_json(), WAIT)
    assert frame["text"] == "via A"
    await boris_on_a.close()


async def test_database_events_still_reach_the_user_through_either_instance(
    settings, redis_client, aiohttp_client, db
) -> None:
    instance_a = await aiohttp_client(create_app(settings))
    instance_b = await aiohttp_client(create_app(settings))
    boris_on_a = await instance_a.ws_connect("/ws", headers=BORIS)
    assert (await asyncio.wait_for(boris_on_a.receive_json(), WAIT))["type"] == "hello"
    # The write goes through B, but the NOTIFY reaches A's own listener.
    assert (await instance_b.post("/api/events/4/registrations", headers=BORIS)).status == 201
    frame = await asyncio.wait_for(boris_on_a.receive_json(), WAIT)
    assert frame == {"type": "new_registration", "user_id": 2, "event_id": 4}
    await boris_on_a.close()
