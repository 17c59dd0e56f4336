"""`GET /api/users/{id}` and `GET /api/users`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from examples.club_api.app.core.api import API
from examples.club_api.app.core.errors import NotFound, json_response
from examples.club_api.app.core.params import active_filter, pagination, path_id

if TYPE_CHECKING:
    import asyncpg
    from aiohttp import web

__all__ = ["get_user", "list_users", "user_json"]

_COLUMNS: Final = "id, name, email, profile, active, created_at"
# `$1::boolean IS NULL` makes one statement serve "no filter" too.
_WHERE: Final = "WHERE ($1::boolean IS NULL OR active = $1)"


def user_json(row: asyncpg.Record) -> dict[str, Any]:
    """A user as the API shows it (key order is part of the contract)."""
    return {
        "id": row["id"],
        "name": row["name"],
        "email": row["email"],
        "profile": row["profile"],
        "active": row["active"],
        "created_at": row["created_at"],
    }


async def get_user(request: web.Request) -> web.Response:
    api = request.app[API]
    user_id = path_id(request)
    row = await api.pg.club.fetchrow(f"SELECT {_COLUMNS} FROM users WHERE id = $1", user_id)
    if row is None:
        msg = "user not found"
        raise NotFound(msg)
    return json_response(user_json(row))


async def list_users(request: web.Request) -> web.Response:
    api = request.app[API]
    active = active_filter(request)
    limit, offset = pagination(request)
    rows = await api.pg.club.fetch(
        f"SELECT {_COLUMNS} FROM users {_WHERE} ORDER BY id LIMIT $2 OFFSET $3",
        active,
        limit,
        offset,
    )
    total = await api.pg.club.fetchval(f"SELECT count(*) FROM users {_WHERE}", active)
    body = {"items": [user_json(r) for r in rows], "total": total, "limit": limit, "offset": offset}
    return json_response(body)
