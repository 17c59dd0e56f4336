"""SIGTERM with open WebSockets: `club-proxy run` closes them with 1001 at once, then exits.

Both routings of a WebSocket: relayed to a legacy upstream, and served by the
in-process new app (`tests.proxy.newapp_sample`, which has no on_shutdown of
its own, so the proxy closes its sockets). The drain timeout is 30 s: a client
that waits for the close longer than `PROMPT` means the proxy waited for it.
A plain request in flight at the signal still gets its answer.
"""

from __future__ import annotations

import asyncio
import signal
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from aiohttp import WSCloseCode, WSMsgType, web

from tests.proxy.test_cli import STARTUP, _wait_ready, club_proxy

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

DRAIN = 30.0
# Well under DRAIN: what "at once" means with room for a slow CI machine.
PROMPT = 10.0


class LegacyUpstream:
    """A real aiohttp server: `/ws` echoes (`legacy:` + text), `/slow` answers after a delay."""

    def __init__(self) -> None:
        self.close_codes: list[int | None] = []
        self.slow_started = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> LegacyUpstream:
        app = web.Application()
        app.router.add_get("/ws", self._ws)
        app.router.add_get("/slow", self._slow)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                await ws.send_str(f"legacy:{msg.data}")
        self.close_codes.append(ws.close_code)
        return ws

    async def _slow(self, request: web.Request) -> web.Response:
        self.slow_started.set()
        await asyncio.sleep(float(request.query.get("delay", "1")))
        return web.Response(text="slow done")


@pytest.fixture
async def legacy() -> AsyncIterator[LegacyUpstream]:
    upstream = await LegacyUpstream().start()
    yield upstream
    await upstream.close()


def _routes(tmp_path: Path, legacy_url: str) -> Path:
    path = tmp_path / "routes.yaml"
    path.write_text(
        f'version: 1\nupstreams: {{legacy: {{url: "{legacy_url}"}}}}\n'
        'new: {app: "tests.proxy.newapp_sample:create_app"}\n'
        "default: legacy\n"
        "routes:\n"
        '  - {id: legacy-ws, match: "GET /ws", to: legacy}\n'
        '  - {id: new-ws, match: "GET /api/ws", to: new}\n',
        encoding="utf-8",
    )
    return path


# Routing: (side, path, echo prefix).
SIDES = [("legacy", "/ws", "legacy:"), ("new", "/api/ws", "new:")]


@pytest.mark.parametrize("routing", SIDES, ids=[s[0] for s in SIDES])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_stop_signal_closes_open_websockets_with_1001_and_the_proxy_exits(
    tmp_path: Path,
    legacy: LegacyUpstream,
    unused_tcp_port_factory: Any,
    routing: tuple[str, str, str],
    sig: signal.Signals,
) -> None:
    side, path, prefix = routing
    port, admin = unused_tcp_port_factory(), unused_tcp_port_factory()
    args = ("--port", str(port), "--admin-port", str(admin), "--no-access-log")
    routes = _routes(tmp_path, legacy.url)
    async with club_proxy(routes, *args, "--drain-timeout", str(DRAIN)) as process:
        limit = aiohttp.ClientTimeout(total=STARTUP)
        async with aiohttp.ClientSession(timeout=limit) as session:
            await _wait_ready(session, f"http://127.0.0.1:{admin}/-/ready")
            async with session.ws_connect(f"http://127.0.0.1:{port}{path}") as ws:
                await ws.send_str("hi")
                assert await ws.receive_str(timeout=PROMPT) == f"{prefix}hi"
                # A plain request in flight when the signal comes still gets its answer.
                slow = asyncio.create_task(session.get(f"http://127.0.0.1:{port}/slow?delay=1.5"))
                await asyncio.wait_for(legacy.slow_started.wait(), STARTUP)
                process.send_signal(sig)
                # Within PROMPT, not after the 30 s drain: a close frame with 1001.
                msg = await ws.receive(timeout=PROMPT)
                assert msg.type is WSMsgType.CLOSE, msg
                assert msg.data == WSCloseCode.GOING_AWAY
                response = await asyncio.wait_for(slow, STARTUP)
                assert response.status == 200
                assert await response.text() == "slow done"
            assert ws.close_code == WSCloseCode.GOING_AWAY
        assert await asyncio.wait_for(process.wait(), PROMPT) == 0
    if side == "legacy":
        # The upstream was told too, with the same code.
        assert legacy.close_codes == [WSCloseCode.GOING_AWAY]
