"""`POST /api/events/{id}/registrations` and `DELETE /api/events/{id}/registrations/me`.

The table trigger announces each write on channel `events`, so legacy PgQueue
listeners react to these writes exactly as to club-api's own.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from tortoise.exceptions import IntegrityError
from tortoise.transactions import in_transaction

from new_services.events.cache import event_cache_key
from new_services.events.models import Event
from new_services.fields import epoch_seconds
from new_services.http import Conflict, NotFound, Unprocessable, json_response
from new_services.params import authenticate, path_id
from new_services.registrations.models import Registration
from new_services.services import SERVICES

__all__ = ["cancel_registration", "create_registration"]


async def _register(user_id: int, event_id: int) -> Registration:
    """Checks in contract order: exists (404), open (422), not yet registered (409), not full (422)."""
    async with in_transaction() as conn:
        # The event row lock serialises registrations for one event: the last place goes once.
        # A model query, not .values(): Tortoise 1.1.9 drops FOR UPDATE from values queries.
        event = await Event.filter(id=event_id).select_for_update().using_db(conn).first()
        if event is None:
            msg = "event not found"
            raise NotFound(msg)
        if not event.active:
            msg = "event is not active"
            raise Unprocessable(msg)
        if await Registration.filter(user_id=user_id, event_id=event_id).using_db(conn).exists():
            msg = "already registered"
            raise Conflict(msg)
        if await Registration.filter(event_id=event_id).using_db(conn).count() >= event.capacity:
            msg = "event is full"
            raise Unprocessable(msg)
        return await Registration.create(user_id=user_id, event_id=event_id, using_db=conn)


def _registration_json(reg: Registration) -> dict[str, Any]:
    return {
        "id": reg.id,
        "user_id": reg.user_id,  # type: ignore[attr-defined]  # Tortoise's FK source field
        "event_id": reg.event_id,  # type: ignore[attr-defined]
        "created_at": epoch_seconds(reg.created_at),
    }


async def create_registration(request: web.Request) -> web.Response:
    """201 with the registration; 409 when already registered, 422 when full or closed."""
    services = request.app[SERVICES]
    user_id = await authenticate(request)
    event_id = path_id(request)
    try:
        registration = await _register(user_id, event_id)
    except IntegrityError as exc:
        # Belt and braces: the row lock should make a duplicate unreachable.
        msg = "already registered"
        raise Conflict(msg) from exc
    await services.cache.delete(event_cache_key(event_id))
    return json_response(_registration_json(registration), status=201)


async def cancel_registration(request: web.Request) -> web.Response:
    """204; 404 when the event or the caller's registration does not exist."""
    services = request.app[SERVICES]
    user_id = await authenticate(request)
    event_id = path_id(request)
    deleted = await Registration.filter(user_id=user_id, event_id=event_id).delete()
    if not deleted:
        found = await Event.exists(id=event_id)
        msg = "registration not found" if found else "event not found"
        raise NotFound(msg)
    await services.cache.delete(event_cache_key(event_id))
    return web.Response(status=204)
