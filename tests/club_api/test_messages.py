"""POST /api/users/{id}/messages: direct messages into this instance's sockets."""

from __future__ import annotations

import asyncio

import pytest

from tests.club_api.conftest import ALICE, BORIS

WAIT = 15.0


async def test_message_reaches_a_socket_on_the_same_instance(client) -> None:
    ws = await client.ws_connect("/ws", headers=BORIS)
    await asyncio.wait_for(ws.receive_json(), WAIT)  # hello: registered
    resp = await client.post("/api/users/2/messages", headers=ALICE, json={"text": "Привет!"})
    assert resp.status == 202
    assert await resp.json() == {"delivered": 1}
    message = await asyncio.wait_for(ws.receive_json(), WAIT)
    assert list(message) == ["type", "from_user_id", "to_user_id", "text", "sent_at"]
    assert (message["type"], message["from_user_id"], message["to_user_id"]) == (
        "direct_message",
        1,
        2,
    )
    assert message["text"] == "Привет!"
    assert isinstance(message["sent_at"], int)
    await ws.close()


async def test_message_to_an_offline_user_is_delivered_nowhere(client) -> None:
    resp = await client.post("/api/users/2/messages", headers=ALICE, json={"text": "hi"})
    assert resp.status == 202
    assert await resp.json() == {"delivered": 0}


async def test_message_to_unknown_user_is_404(client) -> None:
    resp = await client.post("/api/users/42/messages", headers=ALICE, json={"text": "hi"})
    assert resp.status == 404
    assert await resp.json() == {"error": "user not found"}


async def test_message_needs_a_token(client) -> None:
    resp = await client.post("/api/users/2/messages", json={"text": "hi"})
    assert resp.status == 401
    assert await resp.json() == {"error": "authentication required"}


TEXT_ERROR = "invalid text: must be a non-blank string of at most 2000 characters"


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"not json", "invalid json body: expected an object"),
        (b"[1, 2]", "invalid json body: expected an object"),
        (b"", "invalid json body: expected an object"),
        (b"{}", TEXT_ERROR),  # no text
        (b'{"text": 5}', TEXT_ERROR),  # not a string
        (b'{"text": "   "}', TEXT_ERROR),  # blank
        (b'{"text": "' + b"x" * 2001 + b'"}', TEXT_ERROR),  # too long
    ],
)
async def test_message_body_is_validated(client, body: bytes, error: str) -> None:
    resp = await client.post("/api/users/2/messages", headers=ALICE, data=body)
    assert resp.status == 400
    assert await resp.json() == {"error": error}


async def test_message_invalid_user_id_is_400(client) -> None:
    resp = await client.post("/api/users/me/messages", headers=ALICE, json={"text": "hi"})
    assert resp.status == 400
    assert await resp.json() == {"error": "invalid id"}
