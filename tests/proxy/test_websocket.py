"""WebSocket relaying through proxy.webpath.websocket against a real upstream on loopback.

The proxy under test is a tiny aiohttp app whose catch-all handler calls
`relay_websocket` the way the forwarding code does, with the WebSocket session
of a real `UpstreamPools` pool; the upstream is a real aiohttp WebSocket
server that records what it saw.
"""

from __future__ import annotations

import asyncio
import base64
import os
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from aiohttp import WSCloseCode, WSMsgType, web
from multidict import CIMultiDict
from yarl import URL

from proxy.routing.model import Upstream
from proxy.upstream.handshake import REFUSAL_BODY_LIMIT
from proxy.upstream.pools import UpstreamPools
from proxy.webpath.websocket import is_websocket_upgrade, relay_websocket

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from aiohttp.test_utils import TestClient, TestServer

    ClientFactory = Callable[[web.Application], Awaitable[TestClient[web.Request, web.Application]]]
    ServerFactory = Callable[[web.Application], Awaitable[TestServer]]

LIMIT = 64 * 1024
HOP_BY_HOP = {"connection", "upgrade", "keep-alive", "te", "transfer-encoding", "proxy-connection"}
SESSION = web.AppKey("SESSION", aiohttp.ClientSession)
# The upstream's read timeout: a handshake's answer may take this long, an
# idle relayed socket any time.
READ_TIMEOUT = 1.0
REFUSAL = {"error": "banned", "detail": "ask an admin"}
UPSTREAM = web.AppKey("UPSTREAM", URL)
SEEN: web.AppKey[asyncio.Queue[Any]] = web.AppKey("SEEN")


# --- the upstream -------------------------------------------------------------


async def ws_echo(request: web.Request) -> web.WebSocketResponse:
    """Echo frames; 'close-me' closes with 4001 'bye'; 'big N' sends N bytes; records the rest."""
    seen = request.app[SEEN]
    ws = web.WebSocketResponse(protocols=("v1", "v3"), max_msg_size=0, autoping=False)
    await ws.prepare(request)
    await seen.put(("headers", request.headers.copy(), ws.ws_protocol))
    while True:
        msg = await ws.receive()
        if msg.type in {WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR}:
            break
        if msg.type is WSMsgType.TEXT and msg.data == "drop":
            assert request.transport is not None
            request.transport.close()  # no close frame: the upstream vanishes
        await _answer(ws, msg, seen)
    await seen.put(("closed", ws.close_code, msg.extra if msg.type is WSMsgType.CLOSE else None))
    return ws


async def _answer(
    ws: web.WebSocketResponse, msg: aiohttp.WSMessage, seen: asyncio.Queue[Any]
) -> None:
    if msg.type is WSMsgType.PING:
        await seen.put(("ping", msg.data))
        await ws.pong(msg.data)
    elif msg.type is WSMsgType.PONG:
        await seen.put(("pong", msg.data))
    elif msg.type is WSMsgType.TEXT and msg.data == "close-me":
        await ws.close(code=4001, message=b"bye")
    elif msg.type is WSMsgType.TEXT and msg.data.startswith("big "):
        await ws.send_bytes(b"x" * int(msg.data[4:]))
    elif msg.type is WSMsgType.TEXT and msg.data == "ping-me":
        await ws.ping(b"upstream-ping")
    elif msg.type is WSMsgType.TEXT:
        await ws.send_str(msg.data)
    else:
        await ws.send_bytes(msg.data)


async def ws_heartbeat(request: web.Request) -> web.WebSocketResponse:
    """Like club-api's /ws: the server pings, and closes a socket whose pong does not come."""
    ws = web.WebSocketResponse(heartbeat=0.2)
    await ws.prepare(request)
    try:
        async for _ in ws:
            pass
    finally:
        # Also when the dropped connection cancels this handler.
        request.app[SEEN].put_nowait(("closed", ws.close_code, None))
    return ws


async def refuse(request: web.Request) -> web.Response:
    headers = {"X-Reason": "banned", "Set-Cookie": "a=1", "X-Request-ID": "upstream-id"}
    return web.json_response(REFUSAL, status=403, headers=headers)


async def refuse_big(request: web.Request) -> web.Response:
    return web.Response(status=403, body=b"x" * (REFUSAL_BODY_LIMIT + 1))


async def plain(request: web.Request) -> web.Response:
    return web.Response(text="no WebSocket here")


async def moved(request: web.Request) -> web.Response:
    raise web.HTTPFound("/ws")


def upstream_app(seen: asyncio.Queue[Any]) -> web.Application:
    app = web.Application()
    app[SEEN] = seen
    app.router.add_get("/ws", ws_echo)
    app.router.add_get("/heartbeat", ws_heartbeat)
    app.router.add_get("/refuse", refuse)
    app.router.add_get("/refuse-big", refuse_big)
    app.router.add_get("/plain", plain)
    app.router.add_get("/moved", moved)
    return app


# --- the proxy ----------------------------------------------------------------


async def proxy_handler(request: web.Request) -> web.StreamResponse:
    if not is_websocket_upgrade(request):
        return web.Response(text="not an upgrade")
    headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP)
    headers["X-Request-ID"] = "rid-1"
    return await relay_websocket(
        request,
        url=request.app[UPSTREAM].with_path(request.path),
        headers=headers,
        session=request.app[SESSION],
        max_msg_size=LIMIT,
    )


def proxy_app(upstream: URL) -> web.Application:
    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        pools = UpstreamPools()
        pools.sync([Upstream(name="legacy", url=upstream, read_timeout=READ_TIMEOUT)])
        app[SESSION] = pools.current["legacy"].session
        yield
        await pools.close()

    app = web.Application()
    app[UPSTREAM] = upstream
    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", proxy_handler)
    return app


@pytest.fixture
def seen() -> asyncio.Queue[Any]:
    return asyncio.Queue()


@pytest.fixture
async def client(
    aiohttp_server: ServerFactory, aiohttp_client: ClientFactory, seen: asyncio.Queue[Any]
) -> TestClient[web.Request, web.Application]:
    upstream = await aiohttp_server(upstream_app(seen))
    return await aiohttp_client(proxy_app(upstream.make_url("/")))


async def next_seen(seen: asyncio.Queue[Any], kind: str) -> tuple[Any, ...]:
    while True:
        item = await asyncio.wait_for(seen.get(), timeout=10)
        if item[0] == kind:
            return tuple(item)


def upgrade_headers(**extra: str) -> dict[str, str]:
    key = base64.b64encode(os.urandom(16)).decode()
    return {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": key,
        **extra,
    }


# --- tests --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("connection", "upgrade", "expected"),
    [
        ("Upgrade", "websocket", True),
        ("keep-alive, Upgrade", "websocket", True),  # Firefox
        ("UPGRADE", "WebSocket", True),  # case-insensitive
        ("keep-alive", "websocket", False),  # no upgrade token
        ("Upgrade", "h2c", False),  # another protocol
        ("Upgraded", "websocket", False),  # token, not substring
    ],
)
async def test_is_websocket_upgrade(
    aiohttp_client: ClientFactory, connection: str, upgrade: str, expected: bool
) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response(is_websocket_upgrade(request))

    app = web.Application()
    app.router.add_get("/", handler)
    client = await aiohttp_client(app)
    resp = await client.get("/", headers={"Connection": connection, "Upgrade": upgrade})
    assert await resp.json() is expected


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [
        (("v2", "v1"), "v1"),  # the upstream knows v1 only from this list
        (("v3", "v1"), "v3"),  # the client's order decides among known ones
        (("v9",), None),  # no overlap: no subprotocol, as the upstream said
        ((), None),  # none offered
    ],
)
async def test_subprotocol_is_the_upstreams_choice(
    client: TestClient[web.Request, web.Application],
    seen: asyncio.Queue[Any],
    offered: tuple[str, ...],
    chosen: str | None,
) -> None:
    async with client.ws_connect("/ws", protocols=offered) as ws:
        assert ws.protocol == chosen
        _, _, upstream_protocol = await next_seen(seen, "headers")
        assert upstream_protocol == chosen


async def test_request_headers_reach_upstream(
    client: TestClient[web.Request, web.Application], seen: asyncio.Queue[Any]
) -> None:
    headers = {"Host": "club.example", "Cookie": "sid=abc", "Authorization": "Bearer t"}
    async with client.ws_connect("/ws", headers=headers):
        _, upstream_headers, _ = await next_seen(seen, "headers")
    assert upstream_headers["Host"] == "club.example"
    assert upstream_headers["Cookie"] == "sid=abc"
    assert upstream_headers["Authorization"] == "Bearer t"
    assert upstream_headers["X-Request-ID"] == "rid-1"
    assert upstream_headers.getall("Sec-WebSocket-Key") != []
    assert len(upstream_headers.getall("Upgrade")) == 1


async def test_text_and_binary_frames_both_ways(
    client: TestClient[web.Request, web.Application],
) -> None:
    payload = bytes(range(256)) * 4
    async with client.ws_connect("/ws") as ws:
        await ws.send_str("привет ✓")
        msg = await ws.receive(timeout=10)
        assert (msg.type, msg.data) == (WSMsgType.TEXT, "привет ✓")
        await ws.send_bytes(payload)
        msg = await ws.receive(timeout=10)
        assert (msg.type, msg.data) == (WSMsgType.BINARY, payload)


async def test_client_ping_reaches_upstream_and_its_pong_comes_back(
    client: TestClient[web.Request, web.Application], seen: asyncio.Queue[Any]
) -> None:
    async with client.ws_connect("/ws", autoping=False) as ws:
        await ws.ping(b"client-ping")
        assert await next_seen(seen, "ping") == ("ping", b"client-ping")
        msg = await ws.receive(timeout=10)
        assert (msg.type, msg.data) == (WSMsgType.PONG, b"client-ping")


async def test_upstream_ping_reaches_client_and_its_pong_reaches_upstream(
    client: TestClient[web.Request, web.Application], seen: asyncio.Queue[Any]
) -> None:
    async with client.ws_connect("/ws", autoping=False) as ws:
        await ws.send_str("ping-me")
        msg = await ws.receive(timeout=10)
        assert (msg.type, msg.data) == (WSMsgType.PING, b"upstream-ping")
        # Another payload than the ping's: the pong seen upstream is this one.
        await ws.pong(b"client-pong")
        assert await next_seen(seen, "pong") == ("pong", b"client-pong")


async def test_upstream_heartbeat_closes_a_silent_client(
    client: TestClient[web.Request, web.Application], seen: asyncio.Queue[Any]
) -> None:
    # The client never answers the upstream's pings (a half-open client); if
    # the proxy answered them, the upstream would keep the socket forever.
    async with client.ws_connect("/heartbeat", autoping=False) as ws:
        _, code, _ = await next_seen(seen, "closed")
        assert code == WSCloseCode.ABNORMAL_CLOSURE  # aiohttp's heartbeat timeout
        msg = await ws.receive(timeout=10)
        while msg.type is WSMsgType.PING:
            msg = await ws.receive(timeout=10)
        assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1014)  # the upstream is gone


async def test_101_carries_the_request_id(
    client: TestClient[web.Request, web.Application],
) -> None:
    async with client.ws_connect("/ws") as ws:
        assert ws._response.headers["X-Request-ID"] == "rid-1"


async def test_no_total_timeout(client: TestClient[web.Request, web.Application]) -> None:
    # The upstream's read timeout (the session's sock_read) is 1 s; an idle
    # socket must outlive it.
    async with client.ws_connect("/ws") as ws:
        await asyncio.sleep(READ_TIMEOUT * 1.5)
        await ws.send_str("still here")
        msg = await ws.receive(timeout=10)
        assert msg.data == "still here"


async def test_message_just_under_the_limit_passes_both_ways(
    client: TestClient[web.Request, web.Application],
) -> None:
    async with client.ws_connect("/ws") as ws:
        await ws.send_bytes(b"y" * (LIMIT - 1))
        msg = await ws.receive(timeout=10)
        assert (msg.type, len(msg.data)) == (WSMsgType.BINARY, LIMIT - 1)
        await ws.send_str(f"big {LIMIT - 1}")
        msg = await ws.receive(timeout=10)
        assert (msg.type, len(msg.data)) == (WSMsgType.BINARY, LIMIT - 1)


async def test_client_message_over_the_limit_closes_both_sides_with_1009(
    client: TestClient[web.Request, web.Application], seen: asyncio.Queue[Any]
) -> None:
    async with client.ws_connect("/ws") as ws:
        await ws.send_bytes(b"y" * (LIMIT + 1))
        msg = await ws.receive(timeout=10)
        assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1009)
    _, code, _ = await next_seen(seen, "closed")
    assert code == 1009


async def test_upstream_message_over_the_limit_closes_client_with_1009(
    client: TestClient[web.Request, web.Application], seen: asyncio.Queue[Any]
) -> None:
    async with client.ws_connect("/ws") as ws:
        await ws.send_str(f"big {LIMIT + 1}")
        msg = await ws.receive(timeout=10)
        assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1009)
    _, code, _ = await next_seen(seen, "closed")
    assert code == 1009


async def test_upstream_close_code_and_reason_reach_client(
    client: TestClient[web.Request, web.Application],
) -> None:
    async with client.ws_connect("/ws") as ws:
        await ws.send_str("close-me")
        msg = await ws.receive(timeout=10)
        assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, 4001, "bye")


async def test_client_close_code_and_reason_reach_upstream(
    client: TestClient[web.Request, web.Application], seen: asyncio.Queue[Any]
) -> None:
    ws = await client.ws_connect("/ws")
    await ws.send_str("hello")
    await ws.receive(timeout=10)
    await ws.close(code=4002, message=b"ciao")
    assert ws.close_code == 4002  # the proxy echoes the code back
    assert await next_seen(seen, "closed") == ("closed", 4002, "ciao")


async def test_refused_handshake_is_relayed_as_it_came(
    client: TestClient[web.Request, web.Application],
) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await client.ws_connect("/refuse")
    assert info.value.status == 403
    resp = await client.get("/refuse", headers=upgrade_headers())
    assert resp.status == 403
    assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
    assert resp.headers["X-Reason"] == "banned"
    assert resp.headers["Set-Cookie"] == "a=1"
    assert resp.headers.getall("X-Request-ID") == ["rid-1"]  # the proxy's, as on HTTP
    assert await resp.json() == REFUSAL


async def test_an_answer_that_is_not_an_upgrade_is_relayed(
    client: TestClient[web.Request, web.Application],
) -> None:
    resp = await client.get("/plain", headers=upgrade_headers())
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert "Upgrade" not in resp.headers
    assert await resp.text() == "no WebSocket here"


async def test_a_redirect_is_relayed_not_followed(
    client: TestClient[web.Request, web.Application], seen: asyncio.Queue[Any]
) -> None:
    resp = await client.get("/moved", headers=upgrade_headers(), allow_redirects=False)
    assert resp.status == 302
    assert resp.headers["Location"] == "/ws"
    assert seen.empty()  # /ws was never reached


async def test_a_refusal_over_the_body_limit_is_502(
    client: TestClient[web.Request, web.Application],
) -> None:
    resp = await client.get("/refuse-big", headers=upgrade_headers())
    assert resp.status == 502
    assert await resp.json() == {"error": "upstream refusal too large", "request_id": "rid-1"}


async def test_upstream_down_is_502(
    aiohttp_client: ClientFactory, unused_tcp_port_factory: Callable[[], int]
) -> None:
    dead = URL.build(scheme="http", host="127.0.0.1", port=unused_tcp_port_factory())
    client = await aiohttp_client(proxy_app(dead))
    resp = await client.get("/ws", headers=upgrade_headers())
    assert resp.status == 502
    assert await resp.json() == {"error": "upstream unreachable", "request_id": "rid-1"}
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await client.ws_connect("/ws")
    assert info.value.status == 502


async def test_upstream_vanishing_closes_client_with_1014(
    client: TestClient[web.Request, web.Application],
) -> None:
    async with client.ws_connect("/ws") as ws:
        await ws.send_str("drop")
        msg = await ws.receive(timeout=10)
        assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1014)  # Bad Gateway


async def test_client_vanishing_closes_upstream_with_1001(
    client: TestClient[web.Request, web.Application], seen: asyncio.Queue[Any]
) -> None:
    ws = await client.ws_connect("/ws")
    await next_seen(seen, "headers")
    ws._response.connection.transport.close()  # type: ignore[union-attr]
    _, code, _ = await next_seen(seen, "closed")
    assert code == 1001
    await ws.close()
