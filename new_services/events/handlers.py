"""`GET /api/events` and `GET /api/events/{id}` (the detail through the shared cache)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Final

from new_services.events.cache import event_cache_key
from new_services.events.models import Event
from new_services.fields import epoch_seconds
from new_services.http import NotFound, json_response
from new_services.params import active_filter, pagination, path_id
from new_services.registrations.models import Registration
from new_services.services import SERVICES

if TYPE_CHECKING:
    from collections.abc import Mapping

    from aiohttp import web
    from tortoise.queryset import QuerySet

__all__ = ["event_json", "get_event", "list_events", "load_event_detail"]

_FIELDS: Final = ("id", "title", "meta", "starts_at", "capacity", "active", "updated_at")


def event_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """An event as the API lists it (key order is part of the contract)."""
    return {
        "id": row["id"],
        "title": row["title"],
        "meta": row["meta"],
        "starts_at": epoch_seconds(row["starts_at"]),
        "capacity": row["capacity"],
        "active": row["active"],
        "updated_at": epoch_seconds(row["updated_at"]),
    }


def _filtered(*, active: bool | None) -> QuerySet[Event]:
    return Event.all() if active is None else Event.filter(active=active)


async def list_events(request: web.Request) -> web.Response:
    active = active_filter(request)
    limit, offset = pagination(request)
    query = _filtered(active=active)
    rows = await query.order_by("id").limit(limit).offset(offset).values(*_FIELDS)
    total = await query.count()
    body = {
        "items": [event_json(r) for r in rows],
        "total": total,
        "limit": limit,
        "offset": offset,
        # Deliberate noise, as on the legacy side: shadow comparisons ignore it.
        "generated_at": int(time.time()),
    }
    return json_response(body)


async def load_event_detail(event_id: int) -> dict[str, Any]:
    """The detail straight from PostgreSQL (404 when there is no such event)."""
    row: dict[str, Any] | None = await Event.filter(id=event_id).first().values(*_FIELDS)
    if row is None:
        msg = "event not found"
        raise NotFound(msg)
    registered = await Registration.filter(event_id=event_id).count()
    spots_left = max(row["capacity"] - registered, 0)
    return {**event_json(row), "registered": registered, "spots_left": spots_left}


async def get_event(request: web.Request) -> web.Response:
    """Cached for EVENT_CACHE_TTL seconds under club-api's key, in the Packager format."""
    services = request.app[SERVICES]
    event_id = path_id(request)
    detail = await services.cache.get_or_set(
        event_cache_key(event_id),
        lambda: load_event_detail(event_id),
        ttl=services.event_cache_ttl,
    )
    return json_response(detail)
