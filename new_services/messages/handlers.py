"""`POST /api/users/{id}/messages`: a direct message, delivered on every instance.

Legacy club-api writes into the sockets of the instance that handled the
request, so a recipient connected elsewhere gets nothing. Here the message
goes through `WebSocketHub` (Redis): every instance delivers it to the
recipient's sockets, and a reconnecting client can resume it by id.

`delivered` keeps its legacy meaning (the recipient's open sockets on this
instance) so the answer stays byte-identical; delivery itself is wider. The
hub's Redis round trip (and every instance receiving the message) is what
that costs, on top of club-api's in-memory push (docs/new_services.md,
Performance). The sender's session and the recipient's existence are read in
one statement, where club-api sends two.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Final

from new_services.http import BadRequest, NotFound, json_response
from new_services.params import (
    SESSION_USER_SQL,
    bearer_token,
    parse_id,
    path_id,
    read_json,
    session_user,
)
from new_services.services import SERVICES
from new_services.sql import fetchrow

if TYPE_CHECKING:
    from aiohttp import web

__all__ = ["MAX_TEXT", "send_message"]

MAX_TEXT: Final = 2000
# $1 the sender's token, $2 the recipient id (NULL when the path id is invalid).
_PARTIES_SQL: Final = f"""
    SELECT ({SESSION_USER_SQL}) AS sender, EXISTS (SELECT 1 FROM users WHERE id = $2) AS found
"""


def _text(body: dict[str, object]) -> str:
    text = body.get("text")
    if not isinstance(text, str) or not text.strip() or len(text) > MAX_TEXT:
        msg = f"invalid text: must be a non-blank string of at most {MAX_TEXT} characters"
        raise BadRequest(msg)
    return text


async def send_message(request: web.Request) -> web.Response:
    """202 `{"delivered": <recipient sockets on this instance>}`."""
    services = request.app[SERVICES]
    token = bearer_token(request)
    parties = await fetchrow(
        services.orm.db(), _PARTIES_SQL, token, parse_id(request.match_info["id"])
    )
    # The legacy order: authentication (401), path id (400), body (400), recipient (404).
    sender = session_user(None if parties is None else parties["sender"])
    recipient = path_id(request)
    text = _text(await read_json(request))
    if parties is None or not parties["found"]:
        msg = "user not found"
        raise NotFound(msg)
    message = {
        "type": "direct_message",
        "from_user_id": sender,
        "to_user_id": recipient,
        "text": text,
        "sent_at": int(time.time()),
    }
    delivered = services.sockets.count(recipient)
    await services.hub.send_to_user(recipient, message)
    return json_response({"delivered": delivered}, status=202)
