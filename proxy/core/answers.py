"""The answers the proxy gives itself: JSON errors and refusals.

Every such answer has the body `{"error", "request_id"}`, an `X-Request-ID`
header and no `Server` header (it would name the proxy's software); `kind`
names it for the access log and metrics. The fast lane writes the same body
(`error_body`) without building a response object.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import orjson
from aiohttp import web

from proxy.upstream.failures import upstream_failure

if TYPE_CHECKING:
    from proxy.core.headers import ForwardingPolicy

__all__ = [
    "REFUSED_METHODS",
    "ErrorResponse",
    "error_body",
    "error_response",
    "failure_response",
    "refusal",
]

# CONNECT would turn the proxy into a tunnel (YARP refuses it too); TRACE would
# echo the request, proxy-added headers and cookies included, back to a script.
REFUSED_METHODS: Final = frozenset({"CONNECT", "TRACE"})


class ErrorResponse(web.Response):
    """A failure answered by the proxy itself; `kind` names it for metrics and logs."""

    def __init__(self, *, status: int, error: str, request_id: str, kind: str) -> None:
        body = error_body(error, request_id)
        super().__init__(
            status=status,
            body=body,
            content_type="application/json",
            headers={"X-Request-ID": request_id},
        )
        self.kind = kind
        self.body_size = len(body)

    async def _prepare_headers(self) -> None:
        await super()._prepare_headers()
        # The proxy's own answer: aiohttp's `Server` would name the proxy's
        # software. Here rather than in on_response_prepare: the answer to a
        # malformed request (proxy.serving.protocol) is never routed, so no app hook runs.
        self.headers.popall("Server", None)


def error_body(error: str, request_id: str) -> bytes:
    """The body of every answer the proxy gives itself: `{"error", "request_id"}`."""
    return orjson.dumps({"error": error, "request_id": request_id})


def error_response(status: int, error: str, *, request_id: str, kind: str) -> ErrorResponse:
    """A JSON error `{"error", "request_id"}` the proxy answers itself."""
    return ErrorResponse(status=status, error=error, request_id=request_id, kind=kind)


def failure_response(exc: BaseException, *, request_id: str, upstream: str) -> ErrorResponse:
    """The answer to an upstream failure before any response byte was sent: 504 or 502."""
    status, error, kind = upstream_failure(exc, request_id=request_id, upstream=upstream)
    return error_response(status, error, request_id=request_id, kind=kind)


def refusal(request: web.Request, policy: ForwardingPolicy, request_id: str) -> web.Response | None:
    """The answer to a request the proxy will not pass on, or None."""
    if request.method in REFUSED_METHODS:
        return error_response(405, "method not allowed", request_id=request_id, kind="method")
    if "Via" in request.headers and policy.is_loop(request.headers):
        return error_response(508, "loop detected", request_id=request_id, kind="loop")
    return None
