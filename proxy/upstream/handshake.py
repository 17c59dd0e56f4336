"""The WebSocket sessions' client middleware: an upstream's refusal, kept whole.

aiohttp's `ws_connect` would follow a redirect and close any answer but 101
unread. The proxy must pass such a refusal on as it came (status, headers,
body), so its upstream WebSocket sessions (`proxy.upstream.pools`) carry
`refusal_middleware`, which reads the body (up to `REFUSAL_BODY_LIMIT`) and
raises it as `UpstreamRefusal` for `proxy.webpath.websocket` to relay.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import aiohttp

__all__ = ["REFUSAL_BODY_LIMIT", "UpstreamRefusal", "refusal_middleware"]

# A refusal's body is read whole before it is passed on (aiohttp closes the
# handshake's connection on any answer but 101, so it cannot be streamed);
# refusals are error pages, and a bigger one becomes a 502.
REFUSAL_BODY_LIMIT: Final = 1024 * 1024


class UpstreamRefusal(Exception):
    """The upstream answered the upgrade with something other than 101; `body` None: too big."""

    def __init__(self, answer: aiohttp.ClientResponse, body: bytes | None) -> None:
        super().__init__(answer.status)
        self.status = answer.status
        self.reason = answer.reason
        self.headers = answer.headers
        self.body = body


async def refusal_middleware(
    request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
) -> aiohttp.ClientResponse:
    """Client middleware of the WebSocket sessions: raise any answer but 101, body read."""
    answer = await handler(request)
    if answer.status == HTTPStatus.SWITCHING_PROTOCOLS:
        return answer
    try:
        body = await _bounded_body(answer.content)
    finally:
        answer.close()
    raise UpstreamRefusal(answer, body)


async def _bounded_body(content: aiohttp.StreamReader) -> bytes | None:
    body = bytearray()
    while chunk := await content.readany():
        body += chunk
        if len(body) > REFUSAL_BODY_LIMIT:
            return None
    return bytes(body)
