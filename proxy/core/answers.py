"""The answers the proxy gives itself: JSON errors and refusals.

Every such answer has the body `{"error", "request_id"}`, an `X-Request-ID`
header and no `Server` header (it would name the proxy's software). aiohttp's
path answers with `proxy.webpath.responses.ErrorResponse`; the fast lane
writes the same bytes itself (`proxy.fastlane.answer`).
"""

from __future__ import annotations

from typing import Final

import orjson

__all__ = ["REFUSED_METHODS", "error_body"]

# CONNECT would turn the proxy into a tunnel (YARP refuses it too); TRACE would
# echo the request, proxy-added headers and cookies included, back to a script.
REFUSED_METHODS: Final = frozenset({"CONNECT", "TRACE"})


def error_body(error: str, request_id: str) -> bytes:
    """The body of every answer the proxy gives itself: `{"error", "request_id"}`."""
    return orjson.dumps({"error": error, "request_id": request_id})
