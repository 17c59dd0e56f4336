"""A tiny `new` application for proxy tests: ``tests.proxy.newapp_sample:create_app``.

Routes: ``GET /api/users/{id}`` and ``POST /api/events/{id}/registrations``
(both answer JSON describing what they saw), plus ``GET /api/state`` showing
the resource its `cleanup_ctx` opened, so a test can tell whether the proxy
started the app, and ``GET /api/stream``, a streamed answer, and ``GET /api/ws``, a WebSocket
echo (``"new:" + text``). `create_app(settings)` accepts the legacy Settings the proxy
passes when routes.yaml gives `new.config_dir`; `SETTINGS_SEEN` holds them.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

STATE = web.AppKey("state", dict)
SETTINGS_SEEN = web.AppKey("settings_seen", object)
# What GET /api/stream writes, one write each, before its handler returns.
STREAMED = (b"one ", b"two ", b"three")


async def _state_ctx(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    state["started"] = True
    yield
    state["stopped"] = True


async def get_user(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "side": "new",
            "handler": "get_user",
            "id": request.match_info["id"],
            "method": request.method,
        }
    )


async def create_registration(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response(
        {
            "side": "new",
            "handler": "create_registration",
            "event_id": request.match_info["id"],
            "body_size": len(body),
        },
        status=201,
    )


async def stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/plain"})
    await response.prepare(request)
    for part in STREAMED:
        await response.write(part)
    await response.write_eof()
    return response


async def ws_echo(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    try:
        async for msg in ws:
            await ws.send_str(f"new:{msg.data}")
    finally:
        # Cleanup that awaits after the close, as new_services' /ws
        # unregisters from its hub: the connection is gone by then.
        await asyncio.sleep(0.01)
    return ws


async def get_state(request: web.Request) -> web.Response:
    return web.json_response({"side": "new", "state": request.app[STATE]})


def create_app(settings: object | None = None) -> web.Application:
    app = web.Application()
    app[STATE] = {"started": False, "stopped": False}
    app[SETTINGS_SEEN] = settings
    app.cleanup_ctx.append(_state_ctx)
    app.router.add_get("/api/users/{id}", get_user)
    app.router.add_post("/api/events/{id:\\d+}/registrations", create_registration)
    app.router.add_get("/api/state", get_state)
    app.router.add_get("/api/stream", stream)
    app.router.add_get("/api/ws", ws_echo)
    return app


def not_an_app() -> str:
    """A factory that returns the wrong type, for the check tests."""
    return "not an app"
