"""Relay a WebSocket upgrade to an upstream, frame by frame.

The upstream is connected FIRST and the client is accepted only afterwards, with
the subprotocol the upstream chose: a refused upstream handshake reaches the
client as the upstream's own answer (status, headers, body), never as a 101
followed by a close. Frames are re-framed per hop (compression is per hop) but
ping and pong are relayed end to end, so each end's heartbeat sees the other
end; the relay itself, with its close handshake, is `proxy.webpath.ws_relay`.
"""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING, Any, Final

import aiohttp
from aiohttp import WSCloseCode, hdrs, web

from proxy.core.headers import response_headers
from proxy.upstream.handshake import UpstreamRefusal
from proxy.webpath.responses import PassThroughResponse, error_response
from proxy.webpath.ws_relay import CLOSE_TIMEOUT, RELAYS, Relay

if TYPE_CHECKING:
    from multidict import CIMultiDict, CIMultiDictProxy
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

# The relay reads undecoded frames, relays pings, pongs and closes itself and
# needs no receive timeout (a socket may be idle for hours).
_UPSTREAM_OPTIONS: Final[dict[str, Any]] = {
    "autoclose": False,
    "autoping": False,
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


def _error(status: int, message: str, request_id: str, kind: str) -> web.Response:
    # `kind` as on the HTTP path (connect, timeout, protocol): counted in
    # club_proxy_upstream_errors_total like any other upstream failure.
    return error_response(status, message, request_id=request_id, kind=kind)


async def _relay_refusal(
    request: web.Request, refusal: UpstreamRefusal, request_id: str
) -> web.StreamResponse:
    """The upstream's answer as it came, through the HTTP path's header rules."""
    if refusal.body is None:
        return _error(502, "upstream refusal too large", request_id, "protocol")
    response = PassThroughResponse(
        status=refusal.status,
        reason=refusal.reason,
        headers=response_headers(refusal.headers, request_id=request_id),
    )
    try:
        await response.prepare(request)
        await response.write_eof(refusal.body)
    except ConnectionResetError:
        response.aborted = "client"
    else:
        response.body_bytes = len(refusal.body)
    return response


def _upstream_headers(headers: CIMultiDict[str] | CIMultiDictProxy[str]) -> list[tuple[str, str]]:
    return [(k, v) for k, v in headers.items() if k.lower() not in _HANDSHAKE_HEADERS]


async def relay_websocket(
    request: web.Request,
    *,
    url: URL,
    headers: CIMultiDict[str],
    session: aiohttp.ClientSession,
    max_msg_size: int,
    request_id: str | None = None,
) -> web.StreamResponse:
    """Connect `url` as a WebSocket, then accept the client and relay until either side closes.

    `headers` are the already filtered request headers to send upstream (Host,
    Cookie, Authorization, Origin, X-Forwarded-*, X-Request-ID...). `session`
    is an upstream's WebSocket session (`proxy.upstream.pools`): its `connect`
    timeout bounds the TCP connect and its `sock_read` the wait for the
    handshake answer (504 on either). An answer other than 101 is passed on as
    it came (`proxy.upstream.handshake.refusal_middleware` must be on the session), 502 when the
    upstream is unreachable or its 101 is not a valid handshake. Messages
    larger than `max_msg_size` close both sides with 1009.
    """
    rid = request_id or headers.get("X-Request-ID") or uuid.uuid4().hex
    log = {"request_id": rid, "url": str(url)}
    try:
        upstream = await session.ws_connect(
            url,
            protocols=_offered_protocols(request),
            headers=_upstream_headers(headers),
            max_msg_size=max_msg_size,
            **_UPSTREAM_OPTIONS,
        )
    except TimeoutError:
        logger.warning("proxy.ws_upstream_timeout", extra=log)
        return _error(504, "upstream WebSocket handshake timed out", rid, "timeout")
    except UpstreamRefusal as refusal:
        logger.info("proxy.ws_upstream_refused", extra={**log, "status": refusal.status})
        return await _relay_refusal(request, refusal, rid)
    except aiohttp.WSServerHandshakeError as exc:
        # A 101 without Upgrade or with a wrong accept key: not an answer the
        # client could act on.
        logger.warning("proxy.ws_upstream_invalid", extra={**log, "error": exc.message})
        return _error(502, "upstream sent an invalid WebSocket handshake", rid, "protocol")
    except aiohttp.ClientError as exc:
        logger.warning("proxy.ws_upstream_unreachable", extra={**log, "error": repr(exc)})
        return _error(502, "upstream unreachable", rid, "connect")
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
        autoping=False,
        # Per-hop compression costs CPU on every frame for no end-to-end gain.
        compress=False,
        timeout=CLOSE_TIMEOUT,
        decode_text=False,
    )
    client.headers["X-Request-ID"] = log["request_id"]  # as on every answer
    try:
        await client.prepare(request)
    except BaseException:
        await upstream.close(code=WSCloseCode.GOING_AWAY)
        raise
    logger.debug("proxy.ws_open", extra={**log, "protocol": upstream.protocol or ""})
    relay = Relay(client=client, upstream=upstream, log=log)
    # The proxy app's relays end with 1001 when it shuts down (`proxy.serving.app`).
    relays = request.config_dict.get(RELAYS)
    await (relays.run(relay) if relays is not None else relay.run())
    return client
