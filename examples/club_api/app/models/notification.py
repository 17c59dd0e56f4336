"""The PgQueue callback: route database events to the user's sockets.

Legacy `app/models/notification.py`. The registration trigger sends
`{"type": "new_registration" | "registration_cancelled", "user_id", "event_id"}`
on channel `events`; every instance LISTENs, so each one pushes to the sockets
it holds in `store['websockets']` and drops the cached event detail (the
registered count changed, whoever wrote the row).

Direct messages (`POST /api/users/{id}/messages`) use `push_to_user` straight
from the HTTP handler, which is where the multi-instance flaw bites.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Final

from aiohttp import ClientConnectionResetError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from examples.club_api.app.core.api import Store
    from legacy_compat import Cache, Event

__all__ = [
    "EVENT_CACHE_PREFIX",
    "ROUTED_TYPES",
    "event_cache_key",
    "push_to_user",
    "route_events",
]

logger = logging.getLogger(__name__)

ROUTED_TYPES: Final = frozenset({"new_registration", "registration_cancelled"})
EVENT_CACHE_PREFIX: Final = "club:event:"


def event_cache_key(event_id: int) -> str:
    """The Redis key of the cached `GET /api/events/{id}` body."""
    return f"{EVENT_CACHE_PREFIX}{event_id}"


async def push_to_user(store: Store, user_id: int, message: Mapping[str, Any]) -> int:
    """Send `message` to the user's sockets on THIS instance; how many got it."""
    delivered = 0
    for ws in list(store["websockets"].get(user_id, ())):
        if ws.closed:
            continue
        try:
            await ws.send_json(message)
        except ClientConnectionResetError:
            # The client went away between the check and the send.
            continue
        delivered += 1
    return delivered


async def route_events(events: Sequence[Event], *, store: Store, cache: Cache) -> None:
    """PgQueue handler (legacy mode: one event per call, after the debounce sleep)."""
    for event in events:
        user_id = event.payload.get("user_id")
        event_id = event.payload.get("event_id")
        if event.type not in ROUTED_TYPES or not isinstance(user_id, int):
            logger.debug("club_api.event_ignored", extra={"type": event.type})
            continue
        if isinstance(event_id, int):
            await cache.delete(event_cache_key(event_id))
        message = {"type": event.type, "user_id": user_id, "event_id": event_id}
        delivered = await push_to_user(store, user_id, message)
        logger.info(
            "club_api.event_routed",
            extra={"type": event.type, "user_id": user_id, "delivered": delivered},
        )
