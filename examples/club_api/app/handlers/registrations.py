"""`POST /api/events/{id}/registrations` and `DELETE /api/events/{id}/registrations/me`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

from examples.club_api.app.core.api import API
from examples.club_api.app.core.errors import Conflict, NotFound, Unprocessable, json_response
from examples.club_api.app.core.params import authenticate, path_id
from examples.club_api.app.models.notification import event_cache_key
from legacy_compat import DatabaseError

if TYPE_CHECKING:
    from examples.club_api.app.core.api import ClubApi

__all__ = ["cancel_registration", "create_registration"]

UNIQUE_VIOLATION: Final = "23505"

# The event row lock serialises registrations for one event, so two requests
# can never both take the last place.
_LOCK_EVENT_SQL: Final = "SELECT capacity, active FROM events WHERE id = $1 FOR UPDATE"
_INSERT_SQL: Final = """
    INSERT INTO registrations (user_id, event_id) VALUES ($1, $2)
    RETURNING id, user_id, event_id, created_at
"""


async def _register(api: ClubApi, user_id: int, event_id: int) -> dict[str, Any]:
    """Checks in contract order: event exists (404), open (422), not yet registered (409), not full (422)."""
    async with api.pg.club.transaction() as tx:
        event = await tx.fetchrow(_LOCK_EVENT_SQL, event_id)
        if event is None:
            msg = "event not found"
            raise NotFound(msg)
        if not event["active"]:
            msg = "event is not active"
            raise Unprocessable(msg)
        exists = await tx.fetchval(
            "SELECT 1 FROM registrations WHERE user_id = $1 AND event_id = $2", user_id, event_id
        )
        if exists is not None:
            msg = "already registered"
            raise Conflict(msg)
        taken = await tx.fetchval(
            "SELECT count(*) FROM registrations WHERE event_id = $1", event_id
        )
        if taken >= event["capacity"]:
            msg = "event is full"
            raise Unprocessable(msg)
        row = await tx.fetchrow(_INSERT_SQL, user_id, event_id)
    if row is None:  # pragma: no cover  (INSERT ... RETURNING always returns the row)
        msg = "registration insert returned no row"
        raise RuntimeError(msg)
    return dict(row)


async def create_registration(request: web.Request) -> web.Response:
    """201 with the registration; 409 when already registered, 422 when full or closed."""
    api = request.app[API]
    user_id = await authenticate(request, api.pg)
    event_id = path_id(request)
    try:
        registration = await _register(api, user_id, event_id)
    except DatabaseError as exc:
        if exc.sqlstate != UNIQUE_VIOLATION:
            raise
        # Belt and braces: the row lock should make this unreachable.
        msg = "already registered"
        raise Conflict(msg) from exc
    await api.cache.delete(event_cache_key(event_id))
    body = {
        "id": registration["id"],
        "user_id": registration["user_id"],
        "event_id": registration["event_id"],
        "created_at": registration["created_at"],
    }
    return json_response(body, status=201)


async def cancel_registration(request: web.Request) -> web.Response:
    """204; 404 when the event or the caller's registration does not exist."""
    api = request.app[API]
    user_id = await authenticate(request, api.pg)
    event_id = path_id(request)
    deleted = await api.pg.club.fetchval(
        "DELETE FROM registrations WHERE user_id = $1 AND event_id = $2 RETURNING id",
        user_id,
        event_id,
    )
    if deleted is None:
        found = await api.pg.club.fetchval("SELECT 1 FROM events WHERE id = $1", event_id)
        msg = "registration not found" if found is not None else "event not found"
        raise NotFound(msg)
    await api.cache.delete(event_cache_key(event_id))
    return web.Response(status=204)
