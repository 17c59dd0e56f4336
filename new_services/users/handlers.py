"""`GET /api/users/{id}` and `GET /api/users` on the Tortoise `User` model."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from new_services.fields import epoch_seconds
from new_services.http import NotFound, json_response
from new_services.params import active_filter, pagination, path_id
from new_services.users.models import User

if TYPE_CHECKING:
    from collections.abc import Mapping

    from aiohttp import web
    from tortoise.queryset import QuerySet

__all__ = ["get_user", "list_users", "user_json"]

# values() rows, not model instances: the fields convert the same, without per-row objects.
_FIELDS: Final = ("id", "name", "email", "profile", "active", "created_at")


def user_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """A user as the API shows it (key order is part of the contract)."""
    return {
        "id": row["id"],
        "name": row["name"],
        "email": row["email"],
        "profile": row["profile"],
        "active": row["active"],
        "created_at": epoch_seconds(row["created_at"]),
    }


def _filtered(*, active: bool | None) -> QuerySet[User]:
    return User.all() if active is None else User.filter(active=active)


async def get_user(request: web.Request) -> web.Response:
    user_id = path_id(request)
    row: dict[str, Any] | None = await User.filter(id=user_id).first().values(*_FIELDS)
    if row is None:
        msg = "user not found"
        raise NotFound(msg)
    return json_response(user_json(row))


async def list_users(request: web.Request) -> web.Response:
    active = active_filter(request)
    limit, offset = pagination(request)
    query = _filtered(active=active)
    rows = await query.order_by("id").limit(limit).offset(offset).values(*_FIELDS)
    total = await query.count()
    body = {"items": [user_json(r) for r in rows], "total": total, "limit": limit, "offset": offset}
    return json_response(body)
