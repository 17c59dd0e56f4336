"""`GET /api/users/{id}` and `GET /api/users`: fixed SQL over the `User` model's columns.

Both are hot reads, so they run fixed SQL on Tortoise's connection
(`new_services.sql`) instead of ORM querysets; the list answers its page and
its total in one statement, where club-api sends two.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from new_services.http import NotFound, json_response
from new_services.params import active_filter, pagination, path_id
from new_services.services import SERVICES
from new_services.sql import active_page_sql, columns, fetch, fetchrow, jsonb
from new_services.users.models import User

if TYPE_CHECKING:
    from aiohttp import web
    from asyncpg import Record

__all__ = ["get_user", "list_users", "user_json"]

_FIELDS: Final = ("id", "name", "email", "profile", "active", "created_at")
_GET_SQL: Final = f"SELECT {columns(User, _FIELDS, epoch=True)} FROM users WHERE id = $1"
_LIST_SQL: Final = active_page_sql(User, _FIELDS)


def user_json(row: Record) -> dict[str, Any]:
    """A user as the API shows it (key order is part of the contract)."""
    return {
        "id": row["id"],
        "name": row["name"],
        "email": row["email"],
        "profile": jsonb(row["profile"]),
        "active": row["active"],
        "created_at": row["created_at"],  # epoch seconds, from SQL
    }


async def get_user(request: web.Request) -> web.Response:
    user_id = path_id(request)
    row = await fetchrow(request.app[SERVICES].orm.db(), _GET_SQL, user_id)
    if row is None:
        msg = "user not found"
        raise NotFound(msg)
    return json_response(user_json(row))


async def list_users(request: web.Request) -> web.Response:
    active = active_filter(request)
    limit, offset = pagination(request)
    rows = await fetch(request.app[SERVICES].orm.db(), _LIST_SQL, active, limit, offset)
    items = [user_json(r) for r in rows if r["id"] is not None]
    body = {"items": items, "total": rows[0]["total"], "limit": limit, "offset": offset}
    return json_response(body)
