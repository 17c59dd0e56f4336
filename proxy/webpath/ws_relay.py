"""The frame relay between two WebSocket connections (`proxy.webpath.websocket`).

Two pumps, one per direction; the first to end decides how both sides close.
TEXT payloads are relayed as bytes without a decode/encode round trip. PING
and PONG frames are relayed too, payload and all (both sides run with
`autoping=False`), so a heartbeat measures the far end, not the proxy. Close
codes and reasons travel both ways with the close handshake relayed end to
end: the initiator's code and reason reach the other side, and the other
side's reply code goes back to the initiator.

`Relays` holds the relays in progress: when the proxy stops, `going_away()`
ends each one at once, closing both sides with 1001 (Going Away) at the same
time, instead of the server waiting its drain timeout for them.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import aiohttp
from aiohttp import WSCloseCode, WSMsgType, web

__all__ = ["CLOSE_TIMEOUT", "RELAYS", "Relay", "Relays"]

# The relay's records keep the logger name they had inside proxy.webpath.websocket.
logger = logging.getLogger("proxy.webpath.websocket")

# Close codes that must never be sent in a close frame (RFC 6455 §7.4.1).
_RESERVED_CLOSE_CODES = frozenset({1005, 1006, 1015})
# IANA-registered "Bad Gateway": the upstream vanished without a close frame.
_CLOSE_BAD_GATEWAY = 1014
# How long a close handshake may take, per side.
CLOSE_TIMEOUT: Final = 10.0
# Frames copied as they are; CLOSE and errors end the relay instead.
_RELAYED: Final = frozenset({WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.PING, WSMsgType.PONG})


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


@dataclass(frozen=True, slots=True, kw_only=True)
class _End:
    """How a relay ends: close `first` with code and reason, then `second`."""

    first: _Socket
    code: int
    reason: bytes = b""
    second: _Socket
    second_code: int
    # Both close handshakes at once (shutdown), not `first` then `second`.
    together: bool = False


# eq=False: a relay is an identity (held in `Relays`' set), not a value.
@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class Relay:
    """Two pumps, one per direction; the first to end decides how both sides close."""

    client: _Socket
    upstream: _Socket
    log: dict[str, str]
    # Set by `Relays.going_away()`: end now, both sides closed with 1001.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

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
        stopping = asyncio.create_task(self.stopping.wait())
        try:
            await asyncio.wait([*pumps, stopping], return_when=asyncio.FIRST_COMPLETED)
            done = {pump for pump in pumps if pump.done()}
            if done:
                end = self._outcome(done)
            else:
                code = WSCloseCode.GOING_AWAY
                end = _End(
                    first=self.client,
                    code=code,
                    second=self.upstream,
                    second_code=code,
                    together=True,
                )
        except asyncio.CancelledError:
            # Handler cancellation: the client connection dropped. The pumps
            # see the same loss (or a last error such as 1009) within moments;
            # let them say how to close the upstream, then re-raise.
            end = await self._first_end(pumps, patience=CLOSE_TIMEOUT)
            raise
        finally:
            # The other pump is stopped BEFORE closing: aiohttp's close() from
            # another task first has to break that task's pending receive().
            stopping.cancel()
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(stopping, *pumps, return_exceptions=True)
            if end is None:
                code = WSCloseCode.GOING_AWAY
                end = _End(first=self.upstream, code=code, second=self.client, second_code=code)
            first = end.first.close(code=_sendable(end.code), message=end.reason)
            second = end.second.close(code=_sendable(end.second_code))
            if end.together:
                await asyncio.gather(first, second)
            else:
                await first
                await second
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
            if msg.type in _RELAYED:
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


class Relays:
    """The relays in progress in one proxy app (`RELAYS`), ended together at shutdown."""

    __slots__ = ("_live", "_stopping")

    def __init__(self) -> None:
        self._live: set[Relay] = set()
        self._stopping = False

    def __len__(self) -> int:
        return len(self._live)

    async def run(self, relay: Relay) -> None:
        """`relay.run()`, ended by `going_away()` (at once if it was already called)."""
        self._live.add(relay)
        if self._stopping:
            relay.stopping.set()
        try:
            await relay.run()
        finally:
            self._live.discard(relay)

    def going_away(self) -> None:
        """End every relay, now and from now on: both sides get 1001 (Going Away)."""
        self._stopping = True
        for relay in self._live:
            relay.stopping.set()


# The proxy app's relays (`proxy.serving.app` sets it; its on_shutdown ends them).
RELAYS: Final = web.AppKey("RELAYS", Relays)


def _sendable(code: int) -> int:
    return WSCloseCode.OK if code in _RESERVED_CLOSE_CODES else code
