"""Events, handlers and routing shared by PgQueue's plain and durable modes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from enum import Enum
from typing import Any, Final, TypeAlias

import orjson

from legacy_compat.errors import NotifyPayloadTooLarge, QueueError

__all__ = [
    "NOTIFY_PAYLOAD_LIMIT",
    "BadPayload",
    "DebounceMode",
    "Event",
    "Handler",
    "QueueStats",
    "ReconnectHook",
    "Router",
    "encode_notification",
    "parse_notification",
]

logger = logging.getLogger(__name__)

# PostgreSQL refuses NOTIFY payloads of this many bytes or more (docs: "must
# be shorter than 8000 bytes" in the default configuration).
NOTIFY_PAYLOAD_LIMIT: Final = 8000


class DebounceMode(Enum):
    """How events are paced and grouped before they reach the handlers.

    LEGACY: one event per handler call, then a pause of `window` seconds, as
    club-api's PgQueue does (its 2 s sleep); for parity tests and drop-in use.
    COALESCE: events arriving within `window` seconds of the first one are
    delivered together, one batch per handler (plain mode also merges
    identical payloads). Latency is bounded by the window plus handler time.
    """

    LEGACY = "legacy"
    COALESCE = "coalesce"


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """One event as handlers see it.

    Attributes:
        type: the event type (`new_registration`), what handlers are routed by.
        payload: the JSON object. Plain mode: the NOTIFY payload as sent,
            `type` key included, like the legacy callback got it. Durable mode:
            the `payload` given to `club_emit`.
        id: the outbox id in durable mode (use it for idempotency), else None.
        created_at: the outbox row's time as epoch seconds in durable mode, else None.
    """

    type: str
    payload: dict[str, Any]
    id: int | None = None
    created_at: int | None = None


# `async def handler(events: Sequence[Event]) -> None`
Handler: TypeAlias = Callable[[Sequence[Event]], Awaitable[None]]
# `async def on_reconnect() -> None`: re-read whatever state NOTIFYs may have missed.
ReconnectHook: TypeAlias = Callable[[], Awaitable[None]]


class BadPayload(ValueError):
    """A notification that is not a JSON object with a non-empty string `type`."""


def parse_notification(payload: str) -> Event:
    """The Event a plain-mode NOTIFY payload describes; BadPayload when it describes none."""
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        msg = "not JSON"
        raise BadPayload(msg) from exc
    if not isinstance(data, dict):
        msg = "not a JSON object"
        raise BadPayload(msg)
    kind = data.get("type")
    if not isinstance(kind, str) or not kind:
        msg = "no string `type`"
        raise BadPayload(msg)
    return Event(type=kind, payload=data)


def encode_notification(kind: str, payload: Mapping[str, Any] | None) -> str:
    """The legacy NOTIFY text `{"type": kind, **payload}`, refused at PostgreSQL's size limit."""
    if not kind:
        msg = "an event needs a non-empty type"
        raise QueueError(msg)
    data = orjson.dumps({**(payload or {}), "type": kind})
    if len(data) >= NOTIFY_PAYLOAD_LIMIT:
        msg = (
            f"NOTIFY payload of {len(data)} bytes for {kind!r} is at or over PostgreSQL's "
            f"{NOTIFY_PAYLOAD_LIMIT}-byte limit; send an id and read the rest from a table"
        )
        raise NotifyPayloadTooLarge(msg)
    return data.decode()


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueStats:
    """PgQueue counters since it was created (a snapshot; read `queue.stats()` again).

    Attributes:
        received: valid events that arrived (notifications parsed, or outbox rows
            fetched), merged and dropped ones included.
        merged: plain coalesce mode: events folded into an identical pending one.
        dropped: plain mode: events refused because `max_pending` were waiting
            (logged once per overflow episode as `legacy_compat.pgqueue.overflow`).
        bad_payloads: notifications that were not a JSON object with a `type`.
        delivered: events handed to the router (each once, however many handlers).
        batches: router calls.
        handler_errors: handler calls that raised.
        redelivered: durable mode: events fetched again after a reconnect or takeover.
        connects, reconnects, connection_losses, notifications: the listener's.
    """

    received: int = 0
    merged: int = 0
    dropped: int = 0
    bad_payloads: int = 0
    delivered: int = 0
    batches: int = 0
    handler_errors: int = 0
    redelivered: int = 0
    connects: int = 0
    reconnects: int = 0
    connection_losses: int = 0
    notifications: int = 0


class Counters:
    """The mutable side of QueueStats, shared by the parts of one queue."""

    def __init__(self) -> None:
        self.values: dict[str, int] = {f.name: 0 for f in fields(QueueStats)}

    def add(self, name: str, n: int = 1) -> None:
        self.values[name] += n


class Router:
    """Handlers by event type, and the calls that isolate them from each other."""

    def __init__(self, counters: Counters) -> None:
        self._counters = counters
        # Handler -> the types it wants, None for every type. A dict keeps
        # registration order, and one handler registered for two types still
        # gets a single batch.
        self._routes: dict[Handler, set[str] | None] = {}

    def on(self, kind: str, handler: Handler) -> None:
        types = self._routes.setdefault(handler, set())
        if types is not None:
            types.add(kind)

    def on_any(self, handler: Handler) -> None:
        self._routes[handler] = None

    async def dispatch(self, events: Sequence[Event]) -> None:
        """Call every interested handler with its events (in order), all concurrently."""
        calls = []
        for handler, types in self._routes.items():
            batch = [e for e in events if types is None or e.type in types]
            if batch:
                calls.append(self._call(handler, batch))
        self._counters.add("delivered", len(events))
        self._counters.add("batches")
        await asyncio.gather(*calls)

    async def _call(self, handler: Handler, batch: list[Event]) -> None:
        try:
            await handler(batch)
        except Exception:
            # A failing handler must not stop the queue or the other handlers.
            self._counters.add("handler_errors")
            logger.exception(
                "legacy_compat.pgqueue.handler_failed",
                extra={
                    "handler": getattr(handler, "__qualname__", repr(handler)),
                    "events": len(batch),
                },
            )
