"""One local WebSocket of the hub, and the hub's wire format.

Every message reaches a socket through `HubSocket.offer`, which drops what the
socket already has (by Redis stream id), holds live messages aside while the
socket is replaying history, and reports overflow instead of growing: the hub
closes such a socket as a slow consumer.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Literal

import orjson

from legacy_compat.errors import HubError

if TYPE_CHECKING:
    from aiohttp import web

__all__ = [
    "KINDS",
    "HubSocket",
    "Kind",
    "StreamId",
    "encode_message",
    "format_stream_id",
    "frame",
    "parse_fanout",
    "parse_stream_id",
    "stream_id_arg",
    "user_key",
]

# "u": the per-user stream (frames carry "msg_id"), "b": the broadcast stream ("broadcast_id").
Kind = Literal["u", "b"]
KINDS: Final[tuple[Kind, ...]] = ("u", "b")
ID_KEYS: Final[dict[Kind, bytes]] = {"u": b"msg_id", "b": b"broadcast_id"}
StreamId = tuple[int, int]
_STREAM_ID_RE: Final = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")
_USER_RE: Final = re.compile(r"[A-Za-z0-9_.:@-]{1,128}")
_FANOUT_PARTS: Final = 4  # kind, user, id, body


def parse_stream_id(text: str) -> StreamId | None:
    """`(ms, seq)` for a Redis stream id like ``1700000000000-0``, None if malformed."""
    match = _STREAM_ID_RE.fullmatch(text)
    return (int(match[1]), int(match[2])) if match else None


def format_stream_id(sid: StreamId) -> str:
    return f"{sid[0]}-{sid[1]}"


def stream_id_arg(text: str | None) -> StreamId | None:
    """A caller-supplied resume id; HubError when malformed."""
    if text is None:
        return None
    sid = parse_stream_id(text)
    if sid is None:
        msg = f"not a stream id: {text[:40]!r}"
        raise HubError(msg)
    return sid


def user_key(user_id: int | str) -> str:
    """The user id as used in keys and the channel (it must not contain a newline)."""
    user = str(user_id)
    if isinstance(user_id, bool) or not _USER_RE.fullmatch(user):
        msg = f"user id must be an int or 1-128 of [A-Za-z0-9_.:@-], got {user_id!r}"
        raise HubError(msg)
    return user


def encode_message(kind: Kind, message: object) -> bytes:
    """Compact JSON of a message dict; HubError for anything else or a reserved key."""
    if not isinstance(message, dict):
        msg = f"a hub message is a dict, got {type(message).__name__}"
        raise HubError(msg)
    if ID_KEYS[kind].decode() in message:
        msg = f"{ID_KEYS[kind].decode()!r} is set by the hub and cannot be a message key"
        raise HubError(msg)
    try:
        return orjson.dumps(message)
    except orjson.JSONEncodeError as exc:
        msg = f"message is not JSON-serialisable: {exc}"
        raise HubError(msg) from exc


def parse_fanout(raw: bytes) -> tuple[Kind, str, str, StreamId, bytes] | None:
    """(kind, user, id, parsed id, body) of a channel message, None if malformed."""
    parts = raw.split(b"\n", 3)
    if len(parts) != _FANOUT_PARTS or parts[0] not in {b"u", b"b"}:
        return None
    kind_b, user_b, id_b, body = parts
    msg_id = id_b.decode(errors="replace")
    sid = parse_stream_id(msg_id)
    if sid is None:
        return None
    kind: Kind = "u" if kind_b == b"u" else "b"
    return kind, user_b.decode(errors="replace"), msg_id, sid, body


def frame(kind: Kind, msg_id: str | None, body: bytes) -> bytes:
    """The client frame: the message JSON object with its id as the first key.

    `body` is the compact JSON of a dict (``{...}``); the id is spliced in
    rather than re-encoding the message for every instance and socket.
    """
    head = b'{"' + ID_KEYS[kind] + b'":' + (b'"' + msg_id.encode() + b'"' if msg_id else b"null")
    return head + b"}" if body == b"{}" else head + b"," + body[1:]


@dataclass(slots=True, eq=False, kw_only=True)
class HubSocket:
    """A registered socket. Cursors are the last stream ids queued to it."""

    user: str
    ws: web.WebSocketResponse
    queue_size: int
    resume_from: dict[Kind, StreamId | None]
    registered_ms: int = field(default_factory=lambda: time.time_ns() // 1_000_000)
    cursors: dict[Kind, StreamId | None] = field(init=False)
    tails: dict[Kind, StreamId | None] = field(default_factory=lambda: dict.fromkeys(KINDS))
    resuming: bool = True
    closing: bool = False
    queue: asyncio.Queue[bytes] = field(init=False)
    pending: list[tuple[Kind, StreamId, bytes]] = field(default_factory=list)
    writer: asyncio.Task[None] | None = None
    send_started: float | None = None  # loop time of the send in progress, for the watchdog

    def __post_init__(self) -> None:
        self.queue = asyncio.Queue(self.queue_size)
        # The client's ids count as sent: a reconnect catch-up starts after them.
        self.cursors = {kind: self.resume_from.get(kind) for kind in KINDS}

    def offer(self, kind: Kind, sid: StreamId | None, data: bytes) -> bool:
        """Queue a frame unless already sent; False when the socket cannot keep up.

        `sid` None is a local-only frame (Redis unavailable): no cursor, no dedup.
        """
        if self.closing:
            return True
        if sid is not None and self.resuming:
            # Replay is in progress: keep live frames aside, bounded like the queue.
            self.pending.append((kind, sid, data))
            return len(self.pending) <= self.queue_size
        if sid is not None:
            cursor = self.cursors[kind]
            if cursor is not None and sid <= cursor:
                return True  # already queued (replay and live overlap)
            self.cursors[kind] = sid
        try:
            self.queue.put_nowait(data)
        except asyncio.QueueFull:
            return False
        return True

    def end_resume(self) -> bool:
        """Replay finished: release the live frames held aside, in arrival order.

        A held frame is dropped only when the replay already sent it.
        """
        self.resuming = False
        pending, self.pending = self.pending, []
        return all(self.offer(kind, sid, data) for kind, sid, data in pending)

    def catch_up_from(self, kind: Kind) -> StreamId:
        """Where to read missed messages from after a Redis reconnect.

        The last id queued; else the stream end read at connect (`tails`, never
        used to drop live frames: a message stored just before that read may
        still be on its way through Pub/Sub); else, for a socket registered
        while Redis was unreachable, its registration time (stream ids are
        Redis clock milliseconds).
        """
        return self.cursors[kind] or self.tails[kind] or (self.registered_ms, 0)
