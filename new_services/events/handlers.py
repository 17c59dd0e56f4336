"""`GET /api/events` and `GET /api/events/{id}` (the detail through the shared cache).

Hot reads: fixed SQL over the `Event` model's columns on Tortoise's connection
(`new_services.sql`); the list answers its page and total in one statement,
and the detail its row and registration count in one, as club-api does.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Final

from new_services.events.cache import event_cache_key
from new_services.events.models import Event
from new_services.http import NotFound, json_response
from new_services.params import active_filter, pagination, path_id
from new_services.services import SERVICES
from new_services.sql import active_page_sql, columns, fetch, fetchrow, jsonb

if TYPE_CHECKING:
    from aiohttp import web
    from asyncpg import Record
    from tortoise.backends.base.client import BaseDBAsyncClient

__all__ = ["event_json", "get_event", "list_events", "load_event_detail"]

_FIELDS: Final = ("id", "title", "meta", "starts_at", "capacity", "active", "updated_at")
_LIST_SQL: Final = active_page_sql(Event, _FIELDS)
_DETAIL_SQL: Final = f"""
    SELECT {columns(Event, _FIELDS, epoch=True)},
           (SELECT count(*) FROM registrations r WHERE r.event_id = events.id) AS registered
    FROM events WHERE id = $1
"""


def event_json(row: Record) -> dict[str, Any]:
    """An event as the API lists it (key order is part of the contract)."""
    return {
        "id": row["id"],
        "title": row["title"],
        "meta": jsonb(row["meta"]),
        "starts_at": row["starts_at"],  # epoch seconds, from SQL
        "capacity": row["capacity"],
        "active": row["active"],
        "updated_at": row["updated_at"],
    }


async def list_events(request: web.Request) -> web.Response:
    active = active_filter(request)
    limit, offset = pagination(request)
    rows = await fetch(request.app[SERVICES].orm.db(), _LIST_SQL, active, limit, offset)
    body = {
        "items": [event_json(r) for r in rows if r["id"] is not None],
        "total": rows[0]["total"],
        "limit": limit,
        "offset": offset,
        # Deliberate noise, as on the legacy side: shadow comparisons ignore it.
        "generated_at": int(time.time()),
    }
    return json_response(body)


async def load_event_detail(db: BaseDBAsyncClient, event_id: int) -> dict[str, Any]:
    """The detail straight from PostgreSQL (404 when there is no such event)."""
    row = await fetchrow(db, _DETAIL_SQL, event_id)
    if row is None:
        msg = "event not found"
        raise NotFound(msg)
    registered = int(row["registered"])
    spots_left = max(row["capacity"] - registered, 0)
    return {**event_json(row), "registered": registered, "spots_left": spots_left}


async def get_event(request: web.Request) -> web.Response:
    """Cached for EVENT_CACHE_TTL seconds under club-api's key, in the Packager format."""
    services = request.app[SERVICES]
    event_id = path_id(request)
    detail = await services.cache.get_or_set(
        event_cache_key(event_id),
        lambda: load_event_detail(services.orm.db(), event_id),
        ttl=services.event_cache_ttl,
    )
    return json_response(detail)
