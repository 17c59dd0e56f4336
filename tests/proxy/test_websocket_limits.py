"""WebSocket limits and timeouts through the whole proxy app (routes.yaml, pools, dispatch).

The upstream's settings come from routes.yaml as in production: its
`max_connections` must not cap WebSockets, its `connect_timeout` bounds only
the TCP connect and its `read_timeout` the wait for the handshake's answer.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import pytest
from aiohttp import WSMsgType, web

from proxy.serving.app import PROXY
from tests.proxy.forward_support import proxy_app

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

    from aiohttp.test_utils import TestClient, TestServer

    ClientFactory = Callable[[web.Application], Awaitable[TestClient[web.Request, web.Application]]]
    ServerFactory = Callable[[web.Application], Awaitable[TestServer]]

TIMEOUT = 10.0
# Longer than the connect timeout below, far shorter than the read timeout.
SLOW_ANSWER = 1.0
ARRIVED = web.AppKey("ARRIVED", asyncio.Event)
SEEN_IDS: web.AppKey[list[str]] = web.AppKey("SEEN_IDS")


async def ws_echo(request: web.Request) -> web.WebSocketResponse:
    request.app[SEEN_IDS].append(request.headers["X-Request-ID"])
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for msg in ws:
        await ws.send_str(msg.data)
    return ws


async def ws_echo_any_size(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(max_msg_size=0)
    await ws.prepare(request)
    async for msg in ws:
        await ws.send_bytes(msg.data)
    return ws


async def slow(request: web.Request) -> web.WebSocketResponse:
    await asyncio.sleep(SLOW_ANSWER)
    return await ws_echo(request)


async def silent(request: web.Request) -> web.StreamResponse:
    """Reads the upgrade request and never answers (until the proxy hangs up)."""
    request.app[ARRIVED].set()
    await asyncio.Event().wait()
    return web.Response()  # pragma: no cover - cancelled when the proxy gives up


@pytest.fixture
async def upstream(aiohttp_server: ServerFactory) -> TestServer:
    app = web.Application()
    app[ARRIVED] = asyncio.Event()
    app[SEEN_IDS] = []
    app.router.add_get("/ws", ws_echo)
    app.router.add_get("/any-size", ws_echo_any_size)
    app.router.add_get("/slow", slow)
    app.router.add_get("/silent", silent)
    return await aiohttp_server(app)


async def _proxy(
    aiohttp_client: ClientFactory, tmp_path: Path, upstream: TestServer, **opts: str
) -> TestClient[web.Request, web.Application]:
    return await aiohttp_client(proxy_app(tmp_path, str(upstream.make_url("/")), **opts))


async def test_websockets_are_not_capped_by_max_connections(
    aiohttp_client: ClientFactory, tmp_path: Path, upstream: TestServer
) -> None:
    client = await _proxy(aiohttp_client, tmp_path, upstream, max_connections="2")
    async with contextlib.AsyncExitStack() as stack:
        sockets = [await stack.enter_async_context(client.ws_connect("/ws")) for _ in range(5)]
        for n, ws in enumerate(sockets):
            await ws.send_str(f"hello {n}")
        for n, ws in enumerate(sockets):
            msg = await ws.receive(timeout=TIMEOUT)
            assert (msg.type, msg.data) == (WSMsgType.TEXT, f"hello {n}")


async def test_a_slow_handshake_answer_waits_for_the_read_timeout(
    aiohttp_client: ClientFactory, tmp_path: Path, upstream: TestServer
) -> None:
    client = await _proxy(
        aiohttp_client, tmp_path, upstream, connect_timeout="200ms", read_timeout="10s"
    )
    async with client.ws_connect("/slow") as ws:
        await ws.send_str("late but fine")
        msg = await ws.receive(timeout=TIMEOUT)
        assert (msg.type, msg.data) == (WSMsgType.TEXT, "late but fine")


async def test_an_unanswered_handshake_is_504_after_the_read_timeout(
    aiohttp_client: ClientFactory, tmp_path: Path, upstream: TestServer
) -> None:
    # The connect timeout is longer than the guard: only the read timeout can answer in time.
    client = await _proxy(
        aiohttp_client, tmp_path, upstream, connect_timeout="60s", read_timeout="300ms"
    )
    upgrade = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "X-Request-ID": "ws-rid-2",
    }
    resp = await asyncio.wait_for(client.get("/silent", headers=upgrade), TIMEOUT)
    assert resp.status == 504
    assert await resp.json() == {
        "error": "upstream WebSocket handshake timed out",
        "request_id": "ws-rid-2",
    }
    assert upstream.app[ARRIVED].is_set()  # connected: it was the answer that never came
    metrics = client.app[PROXY].metrics.render().decode()
    assert 'club_proxy_upstream_errors_total{kind="timeout",target="legacy"} 1.0' in metrics


async def test_the_request_id_is_echoed_on_the_101(
    aiohttp_client: ClientFactory, tmp_path: Path, upstream: TestServer
) -> None:
    client = await _proxy(aiohttp_client, tmp_path, upstream)
    async with client.ws_connect("/ws", headers={"X-Request-ID": "ws-rid-1"}) as ws:
        assert ws._response.headers["X-Request-ID"] == "ws-rid-1"
    async with client.ws_connect("/ws") as ws:
        generated = ws._response.headers["X-Request-ID"]
    assert upstream.app[SEEN_IDS] == ["ws-rid-1", generated]


async def test_a_5_mib_message_passes_both_ways_by_default(
    aiohttp_client: ClientFactory, tmp_path: Path, upstream: TestServer
) -> None:
    # aiohttp's own default limit is 4 MiB; an upstream that allows more
    # (or a client that sends more to one) must not meet a lower one here.
    client = await _proxy(aiohttp_client, tmp_path, upstream)
    payload = bytes(range(256)) * (5 * 1024 * 4)
    async with client.ws_connect("/any-size", max_msg_size=0) as ws:
        await ws.send_bytes(payload)
        msg = await ws.receive(timeout=TIMEOUT)
        assert msg.type is WSMsgType.BINARY
        assert msg.data == payload
