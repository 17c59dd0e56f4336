"""This instance's sockets, and frames in the legacy wire format.

Two paths reach a client socket:

- Direct messages go through `legacy_compat.WebSocketHub` (Redis), so every
  instance delivers them: the legacy multi-instance flaw is gone.
- Trigger events (`new_registration`, ...) arrive by NOTIFY at every instance
  already, so each instance pushes them to its own sockets only (`LocalSockets`);
  sending them through the hub would deliver each one once per instance.

Legacy clients get byte-identical frames: club-api sends with aiohttp's
`send_json`, i.e. `json.dumps` (spaces after separators, `\\u` escapes), while
the hub frames are compact orjson with a leading ``"msg_id"``. `LegacyFrameSocket`
re-encodes hub frames the legacy way and drops the id unless the client asked
for ids (it passed ``?last_id=`` or ``?msg_ids=1`` to resume after reconnects).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Final

import orjson
from aiohttp import ClientConnectionResetError, WSMsgType, web

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["LegacyFrameSocket", "LocalSockets", "legacy_json"]

_ID_KEYS: Final = ("msg_id", "broadcast_id")


def legacy_json(message: Mapping[str, Any]) -> str:
    """A frame exactly as club-api's `ws.send_json(message)` writes it."""
    return json.dumps(message)


class LegacyFrameSocket(web.WebSocketResponse):
    """A WebSocketResponse whose hub text frames are re-encoded in the legacy format."""

    def __init__(self, *, keep_ids: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._keep_ids = keep_ids

    async def send_frame(
        self, message: bytes, opcode: WSMsgType, compress: int | None = None
    ) -> None:
        if opcode is WSMsgType.TEXT and message[:1] == b"{":
            data = orjson.loads(message)
            if not self._keep_ids:
                for key in _ID_KEYS:
                    data.pop(key, None)
            message = legacy_json(data).encode()
        await super().send_frame(message, opcode, compress)


class LocalSockets:
    """user id -> that user's open sockets on THIS instance."""

    __slots__ = ("_by_user",)

    def __init__(self) -> None:
        self._by_user: dict[int, set[web.WebSocketResponse]] = {}

    def add(self, user_id: int, ws: web.WebSocketResponse) -> None:
        self._by_user.setdefault(user_id, set()).add(ws)

    def discard(self, user_id: int, ws: web.WebSocketResponse) -> None:
        group = self._by_user.get(user_id)
        if group is not None:
            group.discard(ws)
            if not group:
                del self._by_user[user_id]

    def count(self, user_id: int) -> int:
        """Open sockets of the user here (what legacy reports as `delivered`)."""
        return sum(1 for ws in self._by_user.get(user_id, ()) if not ws.closed)

    async def push(self, user_id: int, message: Mapping[str, Any]) -> int:
        """Send `message` to the user's sockets here, legacy-encoded; how many got it."""
        text = legacy_json(message)
        delivered = 0
        for ws in list(self._by_user.get(user_id, ())):
            if ws.closed:
                continue
            try:
                # send_str, not send_frame: the text is already in the legacy format.
                await ws.send_str(text)
            except ClientConnectionResetError:
                continue  # the client went away between the check and the send
            delivered += 1
        return delivered

    async def close_all(self, code: int) -> None:
        """Close every socket here (shutdown); the hub has already let go of them."""
        for group in list(self._by_user.values()):
            for ws in list(group):
                await ws.close(code=code, message=b"server shutdown")
