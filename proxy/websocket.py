"""Relay a WebSocket upgrade to an upstream, frame by frame.

The upstream is connected FIRST and the client is accepted only afterwards, with
the subprotocol the upstream chose: a refused upstream handshake reaches the
client as the upstream's own HTTP status, never as a 101 followed by a close.
Frames are re-framed per hop (ping/pong are answered by each hop, compression is
per hop); the relay itself, with its close handshake, is `proxy._ws_relay`.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Final

import aiohttp
from aiohttp import WSCloseCode, hdrs, web

from proxy._ws_relay import CLOSE_TIMEOUT, Relay
from proxy.forward import error_response

if TYPE_CHECKING:
    from multidict import CIMultiDict, CIMultiDictProxy, MultiMapping
    from yarl import URL

__all__ = ["is_websocket_upgrade", "relay_websocket"]

logger = logging.getLogger(__name__)

# aiohttp's ws_connect writes these itself (key, version, protocols from
# `protocols=`, no extensions since compress=0); a copy from the client would
# override or contradict them.
_HANDSHAKE_HEADERS = frozenset(
    name.lower()
    for name in (
        hdrs.CONNECTION,
        hdrs.UPGRADE,
        hdrs.SEC_WEBSOCKET_KEY,
        hdrs.SEC_WEBSOCKET_VERSION,
        hdrs.SEC_WEBSOCKET_PROTOCOL,
        hdrs.SEC_WEBSOCKET_EXTENSIONS,
        hdrs.CONTENT_LENGTH,
        hdrs.TRANSFER_ENCODING,
    )
)

# Headers of a refused handshake that describe the (dropped) body or one hop;
# the rest (WWW-Authenticate, Set-Cookie, Location, Retry-After...) is passed on.
_REFUSAL_DROP = frozenset(
    name.lower()
    for name in (
        hdrs.CONNECTION,
        hdrs.KEEP_ALIVE,
        hdrs.UPGRADE,
        hdrs.TRANSFER_ENCODING,
        hdrs.CONTENT_LENGTH,
        hdrs.CONTENT_TYPE,
        hdrs.CONTENT_ENCODING,
        hdrs.DATE,
        hdrs.SERVER,
        hdrs.SEC_WEBSOCKET_ACCEPT,
        hdrs.SEC_WEBSOCKET_PROTOCOL,
        hdrs.SEC_WEBSOCKET_EXTENSIONS,
        # The proxy's own answer carries the request id already.
        "X-Request-ID",
    )
)


# The relay reads undecoded frames, answers closes itself and needs no
# receive timeout (a socket may be idle for hours).
_UPSTREAM_OPTIONS: Final[dict[str, Any]] = {
    "autoclose": False,
    "timeout": aiohttp.ClientWSTimeout(ws_receive=None, ws_close=CLOSE_TIMEOUT),
    "decode_text": False,
}


def _tokens(values: list[str]) -> set[str]:
    return {token.strip().lower() for value in values for token in value.split(",")}


def is_websocket_upgrade(request: web.BaseRequest) -> bool:
    """True when the request asks for a WebSocket upgrade.

    Matches by token, case-insensitively, so `Connection: keep-alive, Upgrade`
    (Firefox) and `upgrade: WebSocket` are recognised.
    """
    headers = request.headers
    return "upgrade" in _tokens(headers.getall(hdrs.CONNECTION, [])) and "websocket" in _tokens(
        headers.getall(hdrs.UPGRADE, [])
    )


def _offered_protocols(request: web.BaseRequest) -> tuple[str, ...]:
    values = request.headers.getall(hdrs.SEC_WEBSOCKET_PROTOCOL, [])
    offered = (token.strip() for value in values for token in value.split(","))
    return tuple(token for token in offered if token)


def _error(status: int, message: str, request_id: str) -> web.Response:
    return error_response(status, message, request_id=request_id, kind="websocket")


def _refusal(exc: aiohttp.WSServerHandshakeError, request_id: str) -> web.Response:
    # A 1xx/101 with a broken handshake (bad accept key, no Upgrade) is the
    # upstream's fault, not an answer the client could act on: 502.
    if exc.status < HTTPStatus.OK:
        return _error(502, "upstream sent an invalid WebSocket handshake", request_id)
    response = _error(exc.status, "upstream refused the WebSocket upgrade", request_id)
    if exc.headers is not None:
        _copy_refusal_headers(exc.headers, response)
    return response


def _copy_refusal_headers(upstream: MultiMapping[str], response: web.Response) -> None:
    named = _tokens(upstream.getall(hdrs.CONNECTION, []))
    for name, value in upstream.items():
        lowered = name.lower()
        if lowered not in _REFUSAL_DROP and lowered not in named:
            response.headers.add(name, value)


def _upstream_headers(headers: CIMultiDict[str] | CIMultiDictProxy[str]) -> list[tuple[str, str]]:
    return [(k, v) for k, v in headers.items() if k.lower() not in _HANDSHAKE_HEADERS]


async def relay_websocket(
    request: web.Request,
    *,
    url: URL,
    headers: CIMultiDict[str],
    session: aiohttp.ClientSession,
    max_msg_size: int,
    connect_timeout: float,
    request_id: str | None = None,
) -> web.StreamResponse:
    """Connect `url` as a WebSocket, then accept the client and relay until either side closes.

    `headers` are the already filtered request headers to send upstream (Host,
    Cookie, Authorization, Origin, X-Forwarded-*, X-Request-ID...). Returns the
    upstream's status as a JSON error when it refuses the upgrade, 502 when it is
    unreachable, 504 when the handshake takes longer than `connect_timeout`.
    Messages larger than `max_msg_size` close both sides with 1009.
    """
    rid = request_id or headers.get("X-Request-ID") or uuid.uuid4().hex
    log = {"request_id": rid, "url": str(url)}
    try:
        async with asyncio.timeout(connect_timeout):
            upstream = await session.ws_connect(
                url,
                protocols=_offered_protocols(request),
                headers=_upstream_headers(headers),
                max_msg_size=max_msg_size,
                **_UPSTREAM_OPTIONS,
            )
    except TimeoutError:
        logger.warning("proxy.ws_upstream_timeout", extra=log)
        return _error(504, "upstream WebSocket handshake timed out", rid)
    except aiohttp.WSServerHandshakeError as exc:
        logger.info("proxy.ws_upstream_refused", extra={**log, "status": exc.status})
        return _refusal(exc, rid)
    except aiohttp.ClientError as exc:
        logger.warning("proxy.ws_upstream_unreachable", extra={**log, "error": repr(exc)})
        return _error(502, "upstream unreachable", rid)
    return await _accept_and_relay(request, upstream, max_msg_size=max_msg_size, log=log)


async def _accept_and_relay(
    request: web.Request,
    upstream: aiohttp.ClientWebSocketResponse[bool],
    *,
    max_msg_size: int,
    log: dict[str, str],
) -> web.StreamResponse:
    client: web.WebSocketResponse[bool] = web.WebSocketResponse(
        protocols=(upstream.protocol,) if upstream.protocol else (),
        max_msg_size=max_msg_size,
        autoclose=False,
        # Per-hop compression costs CPU on every frame for no end-to-end gain.
        compress=False,
        timeout=CLOSE_TIMEOUT,
        decode_text=False,
    )
    try:
        await client.prepare(request)
    except BaseException:
        await upstream.close(code=WSCloseCode.GOING_AWAY)
        raise
    logger.debug("proxy.ws_open", extra={**log, "protocol": upstream.protocol or ""})
    await Relay(client=client, upstream=upstream, log=log).run()
    return client
