"""The PgQueue handler: trigger events to this instance's sockets, stale cache dropped.

The registration trigger NOTIFYs `{"type", "user_id", "event_id"}` on channel
`events` for every write, whoever made it (legacy or new). Like club-api's
`route_events`, each instance pushes the event to the sockets it holds and
drops the cached event detail (its `registered` count changed).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Final

from new_services.events.cache import event_cache_key

if TYPE_CHECKING:
    from collections.abc import Sequence

    from legacy_compat import Cache, Event
    from new_services.realtime.sockets import LocalSockets

__all__ = ["ROUTED_TYPES", "route_trigger_events"]

logger = logging.getLogger(__name__)

ROUTED_TYPES: Final = frozenset({"new_registration", "registration_cancelled"})


async def route_trigger_events(
    events: Sequence[Event], *, sockets: LocalSockets, cache: Cache
) -> None:
    """Push routed events to local sockets; other types are ignored (logged at debug)."""
    for event in events:
        user_id = event.payload.get("user_id")
        event_id = event.payload.get("event_id")
        if event.type not in ROUTED_TYPES or not isinstance(user_id, int):
            logger.debug("new_services.event_ignored", extra={"type": event.type})
            continue
        if isinstance(event_id, int):
            await cache.delete(event_cache_key(event_id))
        message = {"type": event.type, "user_id": user_id, "event_id": event_id}
        delivered = await sockets.push(user_id, message)
        logger.info(
            "new_services.event_routed",
            extra={"type": event.type, "user_id": user_id, "delivered": delivered},
        )
