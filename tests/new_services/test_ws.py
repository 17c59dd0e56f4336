"""`GET /ws` parity and the hub: identical frames, and delivery across instances.

Frames are compared as sent (text bytes): club-api writes them with
`json.dumps`, the hub with orjson plus a message id, and new_services must
still put legacy bytes on the wire.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from legacy_compat import WebSocketHub
from tests.new_services.conftest import wait_for
from tests.new_services.test_parity_reads import same_answer

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from tests.new_services.conftest import Twins

U1 = {"Authorization": "Bearer seed-token-1"}

HANDSHAKE_CASES: list[tuple[str, str, dict[str, Any]]] = [
    # refused before the upgrade, in the legacy error shape
    ("GET", "/ws", {}),
    ("GET", "/ws?token=", {}),
    ("GET", "/ws?token=nope", {}),
    ("GET", "/ws?token=tok-expired", {}),
    ("GET", "/ws?token=tok-1002", {}),
    ("GET", "/ws", {"headers": {"Authorization": "Bearer nope"}}),
    ("GET", "/ws?token=seed-token-1", {"headers": {"Authorization": "Basic eA=="}}),
    # authenticated, but not a WebSocket handshake
    ("GET", "/ws?token=seed-token-1", {}),
    ("POST", "/ws?token=seed-token-1", {}),
]


async def test_handshake_refusals_are_identical(twins: Twins) -> None:
    problems = [
        p for m, path, kw in HANDSHAKE_CASES if (p := await same_answer(twins, m, path, **kw))
    ]
    assert not problems, "\n".join(problems)


async def _text(ws: Any) -> str:
    msg = await asyncio.wait_for(ws.receive(), 20)
    assert msg.type is WSMsgType.TEXT, msg
    return str(msg.data)


def _upgrade_headers(ws: Any) -> dict[str, str]:
    kept = ("Upgrade", "Connection", "Sec-WebSocket-Extensions", "Content-Type", "Server")
    return {k: ws._response.headers.get(k, "") for k in kept}


async def test_socket_conversation_is_identical(twins: Twins) -> None:
    async with (
        twins.legacy.ws_connect("/ws?token=seed-token-2") as legacy_ws,
        twins.new.ws_connect("/ws?token=seed-token-2") as new_ws,
    ):
        assert _upgrade_headers(legacy_ws) == _upgrade_headers(new_ws)
        hello = await _text(legacy_ws)
        assert hello == '{"type": "hello", "user_id": 2}'
        assert await _text(new_ws) == hello
        for ws in (legacy_ws, new_ws):
            await ws.send_str("ping")
            await ws.send_str("ignored")
        assert await _text(legacy_ws) == await _text(new_ws) == "pong"
        # A direct message: the frames carry sent_at (seconds), so a pair that
        # straddles a second is sent again; messages are not stored anywhere.
        text = {"text": 'Привет «padel» "7pm"'}
        legacy_frame = new_frame = ""
        for _attempt in range(3):
            legacy_answer = await twins.legacy.post("/api/users/2/messages", json=text, headers=U1)
            new_answer = await twins.new.post("/api/users/2/messages", json=text, headers=U1)
            assert await legacy_answer.read() == await new_answer.read() == b'{"delivered":1}'
            legacy_frame, new_frame = await _text(legacy_ws), await _text(new_ws)
            if legacy_frame == new_frame:
                break
        assert new_frame == legacy_frame
        assert '"text": "\\u041f' in legacy_frame  # json.dumps escapes, as send_json does
        # A trigger event, from each side's own write.
        for client in (twins.legacy, twins.new):
            resp = await client.post(
                "/api/events/6/registrations", headers={"Authorization": "Bearer seed-token-2"}
            )
            assert resp.status in {201, 409}
        assert await _text(legacy_ws) == await _text(new_ws)


async def test_direct_message_reaches_a_socket_on_another_instance(
    twins: Twins, redis_url: str, redis_client: aioredis.Redis, aiohttp_client: Any
) -> None:
    # Instance 2 is a bare hub on the same Redis, holding user 2's socket. club-api
    # would answer delivered 0 and lose the message; new_services publishes it.
    other = WebSocketHub(redis_client, heartbeat=None)
    app = web.Application()

    async def ws_handler(request: web.Request) -> web.WebSocketResponse:
        return await other.serve(request, 2)

    app.router.add_get("/ws", ws_handler)
    app.cleanup_ctx.append(other.cleanup_ctx)
    instance2 = await aiohttp_client(app)
    async with instance2.ws_connect("/ws") as ws:

        async def registered() -> bool:
            return other.stats.sockets == 1

        await wait_for(registered)
        resp = await twins.new.post("/api/users/2/messages", json={"text": "hi"}, headers=U1)
        assert await resp.json() == {"delivered": 0}  # no socket on THIS instance
        frame = await asyncio.wait_for(ws.receive_json(), 20)
    assert frame["text"] == "hi"
    assert (frame["type"], frame["from_user_id"], frame["to_user_id"]) == ("direct_message", 1, 2)
    assert frame["msg_id"]  # the hub's resumable id


async def test_missed_messages_are_resumed_with_last_id(twins: Twins) -> None:
    async with twins.new.ws_connect("/ws?token=seed-token-2&msg_ids=1") as ws:
        await _text(ws)  # hello
        await twins.new.post("/api/users/2/messages", json={"text": "one"}, headers=U1)
        first = await _text(ws)
    assert '"msg_id": "' in first
    last_id = first.split('"msg_id": "')[1].split('"')[0]
    await twins.new.post("/api/users/2/messages", json={"text": "two"}, headers=U1)
    async with twins.new.ws_connect(f"/ws?token=seed-token-2&last_id={last_id}") as ws:
        assert await _text(ws) == '{"type": "hello", "user_id": 2}'
        assert '"text": "two"' in await _text(ws)
