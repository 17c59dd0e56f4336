"""Stream one request to an HTTP upstream and its answer back to the client.

Transparent by construction: the raw request target is forwarded byte for
byte, the original `Host` is kept, bodies stream both ways with bounded memory
and are never decompressed or recompressed, and the only headers that change
are the ones `proxy.core.headers` owns. Failures become answers: `failure_response`
is the one place that maps an upstream failure to 502 or 504; once the
response headers are on their way, a broken upstream aborts the client
connection instead, so a truncated body is never reported as a success.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from proxy.core.headers import response_headers, upstream_request_head
from proxy.upstream.failures import UPSTREAM_FAILURES
from proxy.upstream.limits import ClientBodyTimeout, body_limits
from proxy.webpath.body import BufferedBody, take_body
from proxy.webpath.responses import (
    ErrorResponse,
    PassThroughResponse,
    error_response,
    failure_response,
)

if TYPE_CHECKING:
    import aiohttp
    from aiohttp import web
    from aiohttp.streams import StreamReader

    from proxy.core.headers import ForwardingPolicy
    from proxy.routing.model import Route
    from proxy.shadow.tap import PrimaryTap
    from proxy.upstream.exchange import RequestBody
    from proxy.upstream.pools import UpstreamPool

__all__ = ["forward"]

logger = logging.getLogger(__name__)


async def forward(
    request: web.Request,
    target: str,
    *,
    pool: UpstreamPool,
    policy: ForwardingPolicy,
    request_id: str,
    client_timeout: aiohttp.ClientTimeout | None = None,
    route: Route | None = None,
    tap: PrimaryTap | None = None,
    shown: str | None = None,
) -> web.StreamResponse:
    """Send `request` to the upstream of `pool` and stream the answer back.

    `target` is the raw request target (path and query, undecoded) to send
    upstream. A body is taken by the route's (else the upstream's) request
    buffering and client body timeout (`proxy.webpath.body`). Returns a prepared and finished
    `PassThroughResponse`, or an unprepared `ErrorResponse` when the upstream
    could not answer (or the client's body timed out: 408). `tap` gets a copy
    of the answer (a shadowed route); the caller tells it when the relay is over.
    `shown`: the answer's `X-Club-Target` (routes.yaml `expose_target:`), or None.

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
        body = await _take_body(request, body_limits(route, pool.upstream)) if has_body else None
        if tap is not None and type(body) is BufferedBody:
            tap.request_body = body.data  # read whole: a capture can keep it
        exchange = await pool.client.request(
            method,
            head,
            body,
            chunked=chunked,
            connect_timeout=timeout.connect,
            read_timeout=timeout.sock_read,
        )
    except ClientBodyTimeout:
        return _body_timed_out(request_id)
    except UPSTREAM_FAILURES as exc:
        return failure_response(exc, request_id=request_id, upstream=pool.upstream.name)
    # Any exit but a complete relay (client gone, cancellation) closes the
    # upstream connection instead of returning a half-read one to the pool.
    try:
        message, content = exchange.message, exchange.content
        response = PassThroughResponse(
            status=message.code,
            reason=message.reason,
            headers=response_headers(message.headers, request_id=request_id, target=shown),
        )
        if tap is not None:
            tap.started(message.code, message.headers.items())
        await response.prepare(request)
        await _relay(content, response, request, request_id=request_id, tap=tap)
    finally:
        exchange.finish()
    return response


async def _take_body(request: web.Request, limits: tuple[int, float]) -> RequestBody:
    limit, timeout = limits
    return await take_body(
        request.content, length=request.content_length, limit=limit, idle=timeout
    )


def _body_timed_out(request_id: str) -> ErrorResponse:
    # nginx's answer to client_body_timeout; the rest of the body is never
    # read, so the connection cannot carry another request.
    logger.warning("proxy.client_body_timeout", extra={"request_id": request_id})
    response = error_response(
        408, "request body timed out", request_id=request_id, kind="client_body"
    )
    response.force_close()
    response.abandon_connection = True
    return response


class _UpstreamBodyError(Exception):
    """The upstream failed after its response headers were relayed."""


async def _relay(
    content: StreamReader,
    response: PassThroughResponse,
    request: web.Request,
    *,
    request_id: str,
    tap: PrimaryTap | None,
) -> None:
    try:
        await _copy_body(content, response, tap)
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


async def _copy_body(
    content: StreamReader, response: PassThroughResponse, tap: PrimaryTap | None
) -> None:
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
        if tap is not None:
            tap.feed(chunk)
        if content.at_eof():
            # The last piece: body and end of message in one write.
            await response.write_eof(chunk)
            return
        await write(chunk)
    await response.write_eof()
