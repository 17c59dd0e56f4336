"""`GET /api/events` and `GET /api/events/{id}` (the detail is cached in Redis)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Final

from examples.club_api.app.core.api import API
from examples.club_api.app.core.errors import NotFound, json_response
from examples.club_api.app.core.params import active_filter, pagination, path_id
from examples.club_api.app.models.notification import event_cache_key

if TYPE_CHECKING:
    import asyncpg
    from aiohttp import web

    from examples.club_api.app.core.api import ClubApi

__all__ = ["event_json", "get_event", "list_events", "load_event_detail"]

_COLUMNS: Final = "id, title, meta, starts_at, capacity, active, updated_at"
_WHERE: Final = "WHERE ($1::boolean IS NULL OR active = $1)"
_DETAIL_SQL: Final = f"""
    SELECT {_COLUMNS},
           (SELECT count(*) FROM registrations r WHERE r.event_id = events.id) AS registered
    FROM events WHERE id = $1
"""


def event_json(row: asyncpg.Record) -> dict[str, Any]:
    """An event as the API lists it (key order is part of the contract)."""
    return {
        "id": row["id"],
        "title": row["title"],
        "meta": row["meta"],
        "starts_at": row["starts_at"],
        "capacity": row["capacity"],
        "active": row["active"],
        "updated_at": row["updated_at"],
    }


async def list_events(request: web.Request) -> web.Response:
    api = request.app[API]
    active = active_filter(request)
    limit, offset = pagination(request)
    rows = await api.pg.club.fetch(
        f"SELECT {_COLUMNS} FROM events {_WHERE} ORDER BY id LIMIT $2 OFFSET $3",
        active,
        limit,
        offset,
    )
    total = await api.pg.club.fetchval(f"SELECT count(*) FROM events {_WHERE}", active)
    body = {
        "items": [event_json(r) for r in rows],
        "total": total,
        "limit": limit,
        "offset": offset,
        # Deliberate noise: differs on every call, so shadow comparisons must ignore it.
        "generated_at": int(time.time()),
    }
    return json_response(body)


async def load_event_detail(api: ClubApi, event_id: int) -> dict[str, Any]:
    """The detail straight from PostgreSQL (404 when there is no such event)."""
    row = await api.pg.club.fetchrow(_DETAIL_SQL, event_id)
    if row is None:
        msg = "event not found"
        raise NotFound(msg)
    registered = int(row["registered"])
    spots_left = max(row["capacity"] - registered, 0)
    return {**event_json(row), "registered": registered, "spots_left": spots_left}


async def get_event(request: web.Request) -> web.Response:
    """Cached for EVENT_CACHE_TTL seconds; registration changes drop the entry."""
    api = request.app[API]
    event_id = path_id(request)
    detail = await api.cache.get_or_set(
        event_cache_key(event_id),
        lambda: load_event_detail(api, event_id),
        ttl=api.event_cache_ttl,
    )
    return json_response(detail)
