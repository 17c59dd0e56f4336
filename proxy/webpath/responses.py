"""The proxy's responses on aiohttp's web path, and every aiohttp response internal it uses.

aiohttp's `StreamResponse` has no public hook for the two things a proxy
needs, so both response classes here override its private
`_prepare_headers` (to drop the `Server` and `Content-Type` aiohttp adds) and
`PassThroughResponse` sets `_send_headers_immediately`; `BodyCounter` is an
`AbstractStreamWriter.on_body_write` callback. tests/test_dependency_internals.py
checks that aiohttp still has them (docs/dependency-internals.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from proxy.core.answers import REFUSED_METHODS, error_body
from proxy.core.headers import valid_host
from proxy.upstream.failures import upstream_failure

if TYPE_CHECKING:
    from proxy.core.headers import ForwardingPolicy

__all__ = [
    "BodyCounter",
    "ErrorResponse",
    "OwnResponse",
    "PassThroughResponse",
    "count_body",
    "error_response",
    "failure_response",
    "refusal",
]


class PassThroughResponse(web.StreamResponse):
    """An upstream's answer on its way to the client.

    Headers are held back until the first body bytes (one write for small
    answers) or until the proxy would have to wait for the upstream.
    """

    _send_headers_immediately = False

    def __init__(self, *, status: int, reason: str | None, headers: object) -> None:
        super().__init__(status=status, reason=reason, headers=headers)  # type: ignore[arg-type]
        self.upstream_server = "Server" in self.headers
        self.upstream_content_type = "Content-Type" in self.headers
        self.body_bytes = 0
        # Why the client connection was cut mid-body, if it was.
        self.aborted: str | None = None

    async def _prepare_headers(self) -> None:
        await super()._prepare_headers()
        # Undo what aiohttp's server adds: `Server` always, `Content-Type:
        # application/octet-stream` when a body has none; the upstream's answer
        # reaches the client as sent. Here rather than in an on_response_prepare
        # hook: with no hook, aiohttp skips the signal (an await) per answer.
        if not self.upstream_server:
            self.headers.popall("Server", None)
        if not self.upstream_content_type:
            self.headers.popall("Content-Type", None)


class OwnResponse(web.Response):
    """An answer the proxy gives itself: no `Server` header, an HTTP/1.1 status line."""

    async def _write_headers(self) -> None:
        request = self._req
        if request is None or request.version.major == 1:
            await super()._write_headers()
            return
        # aiohttp echoes the request's version in the status line; to an
        # HTTP/0.9 or 2.0 request line the proxy answers as what it speaks.
        writer = self._payload_writer
        if writer is None:
            msg = "response not prepared"
            raise RuntimeError(msg)
        await writer.write_headers(f"HTTP/1.1 {self.status} {self.reason}", self.headers)

    async def _prepare_headers(self) -> None:
        await super()._prepare_headers()
        # The proxy's own answer: aiohttp's `Server` would name the proxy's
        # software. Here rather than in on_response_prepare: the answer to a
        # malformed request (proxy.serving.protocol) is never routed, so no app hook runs.
        self.headers.popall("Server", None)


class ErrorResponse(OwnResponse):
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
        # Close the connection at once after this answer, without aiohttp's
        # lingering read (up to 10 s) of a request body left unread.
        self.abandon_connection = False


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
    headers = request.headers
    if "Via" in headers and policy.is_loop(headers):
        return error_response(508, "loop detected", request_id=request_id, kind="loop")
    malformed = _malformed(request)
    if malformed is None:
        return None
    status, error = malformed
    response = error_response(status, error, request_id=request_id, kind="bad_request")
    # As for the parser's own refusals: the stream cannot be trusted any more.
    response.force_close()
    return response


def _malformed(request: web.Request) -> tuple[int, str] | None:
    """What llhttp lets through but nginx and the RFCs refuse: (status, error), or None."""
    version = request.version
    if version.major != 1:
        # HTTP/0.9 has no headers to route by; HTTP/2 is not spoken over this hop.
        return (505, "http version not supported") if version.major > 1 else (400, "bad request")
    headers = request.headers
    if not valid_host(headers.get("Host")):
        return 400, "bad request"
    # An empty Transfer-Encoding beside Content-Length: llhttp ignores it, a
    # server behind might not (the probe scored it as smuggling).
    if "Transfer-Encoding" in headers and not "".join(headers.getall("Transfer-Encoding")).strip():
        return 400, "bad request"
    return None


class BodyCounter:
    """`AbstractStreamWriter.on_body_write` callback: body bytes, headers and framing excluded."""

    __slots__ = ("bytes",)

    def __init__(self) -> None:
        self.bytes = 0

    def __call__(self, size: int, _output_size: int) -> None:
        self.bytes += size


def count_body(request: web.BaseRequest) -> BodyCounter:
    """Count the body bytes aiohttp writes for `request` from now on."""
    counter = BodyCounter()
    request.writer.on_body_write = counter
    return counter
