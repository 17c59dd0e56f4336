"""`GET /ws`: the authenticated user's notification socket, on the WebSocket hub.

Same contract as club-api's: token in `Authorization: Bearer` or `?token=`
(401 JSON before the upgrade otherwise), first frame `{"type": "hello",
"user_id": N}` once notifications will reach the socket, a text "ping" is
answered "pong", anything else is ignored. Unlike club-api, direct messages
reach the socket whichever instance handled them, and a client that passes
``?last_id=<msg id>`` (ids are shown with ``?msg_ids=1``) gets what it missed.
"""

from __future__ import annotations

import re
from typing import Final

from aiohttp import WSMsgType, web

from new_services.params import authenticate
from new_services.realtime.sockets import LegacyFrameSocket, legacy_json
from new_services.services import SERVICES

__all__ = ["websocket"]

_STREAM_ID_RE: Final = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")


def _resume_id(request: web.Request) -> str | None:
    # Legacy ignores unknown query parameters; so does a malformed id here.
    value = request.query.get("last_id")
    return value if value is not None and _STREAM_ID_RE.fullmatch(value) else None


async def websocket(request: web.Request) -> web.WebSocketResponse:
    services = request.app[SERVICES]
    user_id = await authenticate(request, allow_query=True)
    last_id = _resume_id(request)
    keep_ids = last_id is not None or request.query.get("msg_ids") == "1"
    ws = LegacyFrameSocket(keep_ids=keep_ids, heartbeat=services.ws_heartbeat)
    await ws.prepare(request)
    # hello first, then register: replayed and live messages always follow it.
    await ws.send_str(legacy_json({"type": "hello", "user_id": user_id}))
    services.sockets.add(user_id, ws)
    await services.hub.register(user_id, ws, last_id=last_id)
    try:
        async for msg in ws:
            if msg.type is WSMsgType.TEXT and msg.data == "ping":
                await ws.send_str("pong")
    finally:
        services.sockets.discard(user_id, ws)
        await services.hub.unregister(user_id, ws)
    return ws
