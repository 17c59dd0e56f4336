"""`POST /api/events/{id}/registrations` and `DELETE /api/events/{id}/registrations/me`.

The table trigger announces each write on channel `events`, so legacy PgQueue
listeners react to these writes exactly as to club-api's own.

Refusals (a double submit, a full or closed event, a wrong id) write nothing,
so they need no lock: one statement decides them on one snapshot, without a
transaction: who the caller is, the event, and where the caller stands. Only
a request that will write takes the event row lock, in a transaction, and
checks again under it (READ COMMITTED gives each statement after the lock a
fresh snapshot, so competing registrations are counted). club-api takes the
lock for every request, so its refusals also queue on a popular event's row.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from aiohttp import web
from tortoise.exceptions import IntegrityError
from tortoise.transactions import in_transaction

from new_services.events.cache import event_cache_key
from new_services.events.models import Event
from new_services.fields import epoch_seconds
from new_services.http import Conflict, NotFound, Unprocessable, json_response
from new_services.params import (
    SESSION_USER_SQL,
    authenticate,
    bearer_token,
    parse_id,
    path_id,
    session_user,
)
from new_services.registrations.models import Registration
from new_services.services import SERVICES
from new_services.sql import fetch, fetchrow

if TYPE_CHECKING:
    from asyncpg import Record

__all__ = ["cancel_registration", "create_registration"]

# Where user {user} stands with event e: what the refusals are decided on.
_STANDING: Final = """
    e.id AS event_id, e.active, e.capacity,
    EXISTS (SELECT 1 FROM registrations r WHERE r.user_id = {user} AND r.event_id = e.id)
        AS registered,
    (SELECT count(*) FROM registrations r WHERE r.event_id = e.id) AS taken
"""
# $1 token, $2 event id (NULL when the path id is invalid): always one row.
_PRECHECK_SQL: Final = f"""
    SELECT a.user_id, {_STANDING.format(user="a.user_id")}
    FROM (SELECT ({SESSION_USER_SQL}) AS user_id) AS a
    LEFT JOIN events e ON e.id = $2
"""
_LOCK_SQL: Final = "SELECT 1 FROM events WHERE id = $1 FOR UPDATE"
# $1 user id, $2 event id; run after the lock, in the same transaction.
_RECHECK_SQL: Final = f"SELECT {_STANDING.format(user='$1')} FROM events e WHERE e.id = $2"


def _refuse(standing: Record | None) -> None:
    """club-api's refusals, in contract order: 404, 422 closed, 409, 422 full."""
    if standing is None or standing["event_id"] is None:
        msg = "event not found"
        raise NotFound(msg)
    if not standing["active"]:
        msg = "event is not active"
        raise Unprocessable(msg)
    if standing["registered"]:
        msg = "already registered"
        raise Conflict(msg)
    if standing["taken"] >= standing["capacity"]:
        msg = "event is full"
        raise Unprocessable(msg)


async def _register(user_id: int, event_id: int) -> Registration:
    """Lock the event row, check again, insert: the last place goes once."""
    async with in_transaction() as conn:
        await fetch(conn, _LOCK_SQL, event_id)
        _refuse(await fetchrow(conn, _RECHECK_SQL, user_id, event_id))
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
    token = bearer_token(request)
    precheck = await fetchrow(
        services.orm.db(), _PRECHECK_SQL, token, parse_id(request.match_info["id"])
    )
    # The legacy order: authentication (401), the path id (400), then the event.
    user_id = session_user(None if precheck is None else precheck["user_id"])
    event_id = path_id(request)
    _refuse(precheck)
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
