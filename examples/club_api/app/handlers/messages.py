"""`POST /api/users/{id}/messages`: a direct message, delivered the legacy way.

The message goes straight into `store['websockets']` of the instance that
handled the request. If the recipient is connected to another instance it is
lost (`delivered` is 0): the multi-instance flaw the WebSocket hub fixes.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Final

from examples.club_api.app.core.api import API
from examples.club_api.app.core.errors import BadRequest, NotFound, json_response
from examples.club_api.app.core.params import authenticate, path_id, read_json
from examples.club_api.app.models.notification import push_to_user

if TYPE_CHECKING:
    from aiohttp import web

__all__ = ["MAX_TEXT", "send_message"]

MAX_TEXT: Final = 2000


def _text(body: dict[str, object]) -> str:
    text = body.get("text")
    if not isinstance(text, str) or not text.strip() or len(text) > MAX_TEXT:
        msg = f"invalid text: must be a non-blank string of at most {MAX_TEXT} characters"
        raise BadRequest(msg)
    return text


async def send_message(request: web.Request) -> web.Response:
    """202 `{"delivered": <sockets reached on this instance>}`."""
    api = request.app[API]
    sender = await authenticate(request, api.pg)
    recipient = path_id(request)
    text = _text(await read_json(request))
    if await api.pg.club.fetchval("SELECT 1 FROM users WHERE id = $1", recipient) is None:
        msg = "user not found"
        raise NotFound(msg)
    message = {
        "type": "direct_message",
        "from_user_id": sender,
        "to_user_id": recipient,
        "text": text,
        "sent_at": int(time.time()),
    }
    delivered = await push_to_user(api.store, recipient, message)
    return json_response({"delivered": delivered}, status=202)
