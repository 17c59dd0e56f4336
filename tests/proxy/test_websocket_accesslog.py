"""How a WebSocket ends in the access log and metrics, relayed or in-process.

A WebSocket that ends with a close handshake is a 101, whoever closed it; a
client that vanishes (its connection cut, no close frame) is a 499
`"aborted":"client"`. The proxy runs as `club-proxy run` serves it (its
runner on a loopback port); the legacy side is a real aiohttp WebSocket
server, the new side `tests.proxy.newapp_sample` in-process.
"""

from __future__ import annotations

import base64
import os
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from aiohttp import web

from proxy.core.state import PROXY
from proxy.serving.app import create_app
from tests.proxy.forward_support import RawClient, request, serve_proxy
from tests.proxy.test_accesslog_bytes import Lines

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from aiohttp.test_utils import TestServer
    from pytest_aiohttp import AiohttpServer

# The route to each side: ids as in the access line and the metrics' labels.
SIDES = [("legacy-ws", "/ws"), ("new-ws", "/api/ws")]


async def _legacy_ws(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for msg in ws:
        await ws.send_str(f"legacy:{msg.data}")
    return ws


@pytest.fixture
async def legacy(aiohttp_server: AiohttpServer) -> TestServer:
    app = web.Application()
    app.router.add_get("/ws", _legacy_ws)
    return await aiohttp_server(app)


@pytest.fixture
def lines() -> Lines:
    return Lines()


@pytest.fixture
async def proxy(
    tmp_path: Path, legacy: TestServer, lines: Lines
) -> AsyncIterator[tuple[web.Application, int]]:
    path = tmp_path / "routes.yaml"
    path.write_text(
        f'version: 1\nupstreams: {{legacy: {{url: "{legacy.make_url("")}"}}}}\n'
        'new: {app: "tests.proxy.newapp_sample:create_app"}\n'
        "default: legacy\n"
        "routes:\n"
        '  - {id: legacy-ws, match: "GET /ws", to: legacy}\n'
        '  - {id: new-ws, match: "GET /api/ws", to: new}\n',
        encoding="utf-8",
    )
    app = create_app(routes_path=path, reload_on_sighup=False, access_log=lines.log)
    runner, port = await serve_proxy(app)
    yield app, port
    await runner.cleanup()


def _count(app: web.Application, route: str, status: int) -> int:
    counts = app[PROXY].metrics.counts
    return sum(n for key, n in counts.items() if key[0] == route and key[3] == status)


@pytest.mark.parametrize(("route", "path"), SIDES)
async def test_a_websocket_closed_by_the_client_is_a_101(
    proxy: tuple[web.Application, int], lines: Lines, route: str, path: str
) -> None:
    app, port = proxy
    rid = f"rid-close-{route}"
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"http://127.0.0.1:{port}{path}", headers={"X-Request-ID": rid}) as ws,
    ):
        await ws.send_str("hi")
        assert (await ws.receive_str(timeout=10)).endswith(":hi")
        await ws.close()
        assert ws.close_code == aiohttp.WSCloseCode.OK
    line = await lines.wait_for(rid)
    assert line["status"] == 101
    assert "aborted" not in line
    assert line["duration_ms"] > 0
    assert _count(app, route, 101) == 1
    assert _count(app, route, 499) == 0


@pytest.mark.parametrize(("route", "path"), SIDES)
async def test_a_client_that_vanishes_is_a_499(
    proxy: tuple[web.Application, int], lines: Lines, route: str, path: str
) -> None:
    app, port = proxy
    rid = f"rid-gone-{route}"
    client = await RawClient.connect(port)
    key = base64.b64encode(os.urandom(16)).decode()
    upgrade = [
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", key),
        ("X-Request-ID", rid),
    ]
    await client.send(request("GET", path, headers=upgrade))
    status, _, _ = await client.read_head()
    assert status == 101
    client.writer.transport.abort()  # no close frame, no FIN: the client is gone
    line: dict[str, Any] = await lines.wait_for(rid)
    assert line["status"] == 499
    assert line["aborted"] == "client"
    assert _count(app, route, 499) == 1
    assert _count(app, route, 101) == 0
