"""`GET /ws`: the authenticated user's notification socket (legacy, in-process).

The socket is kept in `store['websockets'][user_id]` of this process only.
The first frame is `{"type": "hello", "user_id": N}` (sent once the socket is
registered, so a client knows notifications will reach it); a text "ping" is
answered with "pong"; anything else from the client is ignored.
"""

from __future__ import annotations

from aiohttp import WSMsgType, web

from examples.club_api.app.core.api import API
from examples.club_api.app.core.params import authenticate

__all__ = ["websocket"]


async def websocket(request: web.Request) -> web.WebSocketResponse:
    """Token in `Authorization: Bearer` or `?token=`; 401 before the upgrade otherwise."""
    api = request.app[API]
    user_id = await authenticate(request, api.pg, allow_query=True)
    ws = web.WebSocketResponse(heartbeat=api.ws_heartbeat)
    await ws.prepare(request)
    sockets = api.store["websockets"].setdefault(user_id, set())
    sockets.add(ws)
    try:
        await ws.send_json({"type": "hello", "user_id": user_id})
        async for msg in ws:
            if msg.type is WSMsgType.TEXT and msg.data == "ping":
                await ws.send_str("pong")
    finally:
        sockets.discard(ws)
        if not sockets and api.store["websockets"].get(user_id) is sockets:
            del api.store["websockets"][user_id]
    return ws
