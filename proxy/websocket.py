"""Relay a WebSocket upgrade to an upstream, frame by frame.

The upstream is connected FIRST and the client is accepted only afterwards, with
the subprotocol the upstream chose: a refused upstream handshake reaches the
client as the upstream's own HTTP status, never as a 101 followed by a close.
Frames are re-framed per hop (ping/pong are answered by each hop, compression is
per hop), TEXT payloads are relayed as bytes without a decode/encode round trip,
and close codes and reasons travel both ways with the close handshake relayed
end to end: the initiator's code and reason reach the other side, and the other
side's reply code goes back to the initiator.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp
from aiohttp import WSCloseCode, WSMsgType, hdrs, web

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

# Close codes that must never be sent in a close frame (RFC 6455 §7.4.1).
_RESERVED_CLOSE_CODES = frozenset({1005, 1006, 1015})
# IANA-registered "Bad Gateway": the upstream vanished without a close frame.
_CLOSE_BAD_GATEWAY = 1014
_CLOSE_TIMEOUT = 10.0


class _Message(Protocol):
    @property
    def type(self) -> WSMsgType: ...

    @property
    def data(self) -> Any: ...

    @property
    def extra(self) -> str | None: ...


class _Socket(Protocol):
    """What the relay needs from both aiohttp WebSocket classes."""

    @property
    def close_code(self) -> int | None: ...

    # aiohttp does not export its decode_text=False message type (a NamedTuple
    # with the same fields), so the relay reads messages structurally.
    async def receive(self) -> _Message: ...

    async def send_frame(
        self, message: bytes, opcode: WSMsgType, compress: int | None = None
    ) -> None: ...

    async def close(self, *, code: int = ..., message: bytes = b"") -> bool: ...


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
                autoclose=False,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=_CLOSE_TIMEOUT),
                decode_text=False,
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
        timeout=_CLOSE_TIMEOUT,
        decode_text=False,
    )
    try:
        await client.prepare(request)
    except BaseException:
        await upstream.close(code=WSCloseCode.GOING_AWAY)
        raise
    logger.debug("proxy.ws_open", extra={**log, "protocol": upstream.protocol or ""})
    await _Relay(client=client, upstream=upstream, log=log).run()
    return client


@dataclass(frozen=True, slots=True, kw_only=True)
class _End:
    """How a relay ends: close `first` with code and reason, then `second`."""

    first: _Socket
    code: int
    reason: bytes = b""
    second: _Socket
    second_code: int


@dataclass(frozen=True, slots=True, kw_only=True)
class _Relay:
    """Two pumps, one per direction; the first to end decides how both sides close."""

    client: _Socket
    upstream: _Socket
    log: dict[str, str]

    async def run(self) -> None:
        pumps = [
            asyncio.create_task(
                self._pump(self.client, self.upstream, src_gone=1001, dst_gone=_CLOSE_BAD_GATEWAY)
            ),
            asyncio.create_task(
                self._pump(self.upstream, self.client, src_gone=_CLOSE_BAD_GATEWAY, dst_gone=1001)
            ),
        ]
        end: _End | None = None
        try:
            end = await self._first_end(pumps, patience=None)
        except asyncio.CancelledError:
            # Handler cancellation: the client connection dropped. The pumps
            # see the same loss (or a last error such as 1009) within moments;
            # let them say how to close the upstream, then re-raise.
            end = await self._first_end(pumps, patience=_CLOSE_TIMEOUT)
            raise
        finally:
            # The other pump is stopped BEFORE closing: aiohttp's close() from
            # another task first has to break that task's pending receive().
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            if end is None:
                code = WSCloseCode.GOING_AWAY
                end = _End(first=self.upstream, code=code, second=self.client, second_code=code)
            await end.first.close(code=_sendable(end.code), message=end.reason)
            await end.second.close(code=_sendable(end.second_code))
            logger.debug("proxy.ws_closed", extra={**self.log, "code": end.code})

    async def _first_end(
        self, pumps: list[asyncio.Task[_End]], *, patience: float | None
    ) -> _End | None:
        done, _ = await asyncio.wait(pumps, timeout=patience, return_when=asyncio.FIRST_COMPLETED)
        return self._outcome(done) if done else None

    def _outcome(self, done: set[asyncio.Task[_End]]) -> _End:
        task = done.pop()
        if (exc := task.exception()) is None:
            return task.result()
        logger.error("proxy.ws_relay_error", exc_info=exc, extra=self.log)
        code = WSCloseCode.INTERNAL_ERROR
        return _End(first=self.client, code=code, second=self.upstream, second_code=code)

    @staticmethod
    async def _pump(src: _Socket, dst: _Socket, *, src_gone: int, dst_gone: int) -> _End:
        """Copy frames from src to dst until one of them ends; say how to close both."""
        while True:
            msg = await src.receive()
            if msg.type is WSMsgType.TEXT or msg.type is WSMsgType.BINARY:
                try:
                    await dst.send_frame(msg.data, msg.type)
                except ConnectionError:
                    return _End(first=src, code=dst_gone, second=dst, second_code=src_gone)
            elif msg.type is WSMsgType.CLOSE:
                # The initiator's code and reason go on; src's handshake is
                # completed by echoing its code (RFC 6455 §5.5.1).
                code, reason = msg.data, (msg.extra or "").encode()
                return _End(first=dst, code=code, reason=reason, second=src, second_code=code)
            elif msg.type is WSMsgType.ERROR and isinstance(msg.data, aiohttp.WebSocketError):
                # aiohttp already closed src with the error's code (1009 for a
                # message over max_msg_size); dst gets the same code.
                code = msg.data.code
                return _End(first=dst, code=code, second=src, second_code=code)
            else:  # CLOSED, CLOSING or a transport error: src vanished
                return _End(first=dst, code=src_gone, second=src, second_code=src_gone)


def _sendable(code: int) -> int:
    return WSCloseCode.OK if code in _RESERVED_CLOSE_CODES else code
