"""Stream one request to an HTTP upstream and its answer back to the client.

Transparent by construction: the raw request target is forwarded byte for
byte, the original `Host` is kept, bodies stream both ways with bounded memory
and are never decompressed or recompressed, and the only headers that change
are the ones `proxy.headers` owns. Failures become answers: `failure_response`
is the one place that maps an upstream failure to 502 or 504; once the
response headers are on their way, a broken upstream aborts the client
connection instead, so a truncated body is never reported as a success.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Final

import aiohttp
import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from proxy._upstream_client import UpstreamUnreachable
from proxy.headers import response_headers, upstream_request_head

if TYPE_CHECKING:
    from aiohttp.streams import StreamReader

    from proxy.headers import ForwardingPolicy
    from proxy.upstreams import UpstreamPool

__all__ = [
    "REFUSED_METHODS",
    "UPSTREAM_FAILURES",
    "ErrorResponse",
    "PassThroughResponse",
    "error_body",
    "error_response",
    "failure_response",
    "forward",
    "refusal",
    "upstream_failure",
]

logger = logging.getLogger(__name__)

# CONNECT would turn the proxy into a tunnel (YARP refuses it too); TRACE would
# echo the request, proxy-added headers and cookies included, back to a script.
REFUSED_METHODS: Final = frozenset({"CONNECT", "TRACE"})


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
        # malformed request (proxy._protocol) is never routed, so no app hook runs.
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


def upstream_failure(exc: BaseException, *, request_id: str, upstream: str) -> tuple[int, str, str]:
    """Log an upstream failure and map it to (status, error, kind): 504 or 502.

    Timeouts come first: aiohttp's `ServerTimeoutError` is both a TimeoutError
    and a `ClientConnectionError`.
    """
    if isinstance(exc, TimeoutError):
        status, error, kind = 504, "upstream timed out", "timeout"
    elif isinstance(exc, (aiohttp.ClientConnectorError, UpstreamUnreachable)):
        status, error, kind = 502, "upstream unreachable", "connect"
    else:
        status, error, kind = 502, "upstream failed", "protocol"
    logger.warning(
        "proxy.upstream_failed",
        extra={"request_id": request_id, "upstream": upstream, "kind": kind, "error": repr(exc)},
    )
    return status, error, kind


def refusal(request: web.Request, policy: ForwardingPolicy, request_id: str) -> web.Response | None:
    """The answer to a request the proxy will not pass on, or None."""
    if request.method in REFUSED_METHODS:
        return error_response(405, "method not allowed", request_id=request_id, kind="method")
    if "Via" in request.headers and policy.is_loop(request.headers):
        return error_response(508, "loop detected", request_id=request_id, kind="loop")
    return None


# What the thin client raises for an upstream that could not answer.
UPSTREAM_FAILURES: Final = (
    TimeoutError,
    aiohttp.ClientError,
    HttpProcessingError,
    UpstreamUnreachable,
)


async def forward(
    request: web.Request,
    target: str,
    *,
    pool: UpstreamPool,
    policy: ForwardingPolicy,
    request_id: str,
    client_timeout: aiohttp.ClientTimeout | None = None,
) -> web.StreamResponse:
    """Send `request` to the upstream of `pool` and stream the answer back.

    `target` is the raw request target (path and query, undecoded) to send
    upstream. Returns a prepared and finished `PassThroughResponse`, or an
    unprepared `ErrorResponse` when the upstream could not answer.

    Long because it is every relayed request's path, kept in one frame.
    """
    method = request.method
    has_body = request.body_exists
    head, chunked = upstream_request_head(
        method,
        target,
        request.raw_headers,
        policy=policy,
        peer=request.remote,
        scheme=request.scheme,
        request_id=request_id,
        default_host=pool.host_header,
        body=has_body,
    )
    timeout = client_timeout or pool.timeout
    try:
        exchange = await pool.client.request(
            method,
            head,
            request.content if has_body else None,
            chunked=chunked,
            connect_timeout=timeout.connect,
            read_timeout=timeout.sock_read,
        )
    except UPSTREAM_FAILURES as exc:
        return failure_response(exc, request_id=request_id, upstream=pool.upstream.name)
    # Any exit but a complete relay (client gone, cancellation) closes the
    # upstream connection instead of returning a half-read one to the pool.
    try:
        message, content = exchange.message, exchange.content
        response = PassThroughResponse(
            status=message.code,
            reason=message.reason,
            headers=response_headers(message.headers, request_id=request_id),
        )
        await response.prepare(request)
        await _relay(content, response, request, request_id=request_id)
    finally:
        exchange.finish()
    return response


class _UpstreamBodyError(Exception):
    """The upstream failed after its response headers were relayed."""


async def _relay(
    content: StreamReader,
    response: PassThroughResponse,
    request: web.Request,
    *,
    request_id: str,
) -> None:
    try:
        await _copy_body(content, response)
    except ConnectionResetError:
        # The client went away mid-answer: nothing to tell it. The caller's
        # `finally` closes the upstream connection; aiohttp ends this one.
        response.aborted = "client"
        logger.debug("proxy.client_gone", extra={"request_id": request_id})
    except _UpstreamBodyError as exc:
        # Too late for a 502: cut the client connection so it sees a truncated
        # message (short of Content-Length, or no last chunk), never a success.
        response.aborted = "upstream"
        logger.warning(
            "proxy.upstream_aborted",
            extra={"request_id": request_id, "sent": response.body_bytes, "error": repr(exc)},
        )
        request.protocol.force_close()


async def _copy_body(content: StreamReader, response: PassThroughResponse) -> None:
    write = response.write
    sent = 0
    while True:
        if content.total_bytes == sent and not content.is_eof():
            # Nothing buffered: let the client see the headers while we wait.
            await write(b"")
        try:
            chunk = await content.readany()
        except UPSTREAM_FAILURES as exc:
            raise _UpstreamBodyError from exc
        if not chunk:
            break
        sent += len(chunk)
        response.body_bytes = sent
        if content.at_eof():
            # The last piece: body and end of message in one write.
            await response.write_eof(chunk)
            return
        await write(chunk)
    await response.write_eof()
