"""Request parsing with club-api's rules and messages: ids, pagination, filters, bearer auth.

Checks run in the legacy order (README "Errors"): authentication, path id,
query (`active`, `limit`, `offset`), body, then existence and state.
"""

from __future__ import annotations

import re
from typing import Any, Final

import orjson
from aiohttp import hdrs, web

from new_services.http import BadRequest, Unauthorized
from new_services.services import SERVICES
from new_services.sql import fetchrow

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "MAX_OFFSET",
    "SESSION_USER_SQL",
    "active_filter",
    "authenticate",
    "bearer_token",
    "pagination",
    "parse_id",
    "path_id",
    "read_json",
    "session_user",
]

DEFAULT_LIMIT: Final = 20
MAX_LIMIT: Final = 100
MAX_OFFSET: Final = 1_000_000
_MAX_ID: Final = 2**63 - 1  # bigint
# Positive decimal without sign or leading zeros: "7" yes, "07", "+7", "0" no.
_ID_RE: Final = re.compile(r"[1-9][0-9]{0,18}")
_NUMBER_RE: Final = re.compile(r"[0-9]{1,7}")
# The user behind bearer token $1 (an active user, an unexpired session), as a
# statement or a scalar subquery: handlers fold it into their first query, so
# authentication costs no round trip of its own. The database clock decides
# expiry, as on the legacy side (not this host's clock).
SESSION_USER_SQL: Final = """
    SELECT s.user_id FROM sessions s JOIN users u ON u.id = s.user_id
    WHERE s.token = $1 AND u.active AND (s.expires_at IS NULL OR s.expires_at > now())
"""


def parse_id(text: str) -> int | None:
    """A positive bigint in the legacy id syntax, else None."""
    if _ID_RE.fullmatch(text) is None or int(text) > _MAX_ID:
        return None
    return int(text)


def path_id(request: web.Request, name: str = "id") -> int:
    """The `{id}` path segment as a positive bigint, else 400 "invalid id"."""
    value = parse_id(request.match_info[name])
    if value is None:
        msg = "invalid id"
        raise BadRequest(msg)
    return value


def _bounded(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    if _NUMBER_RE.fullmatch(text) is None or not low <= int(text) <= high:
        msg = f"invalid {name}: must be an integer from {low} to {high}"
        raise BadRequest(msg)
    return int(text)


def pagination(request: web.Request) -> tuple[int, int]:
    """`limit` (1..100, default 20) and `offset` (0..1000000, default 0)."""
    return (
        _bounded(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT),
        _bounded(request, "offset", 0, 0, MAX_OFFSET),
    )


def active_filter(request: web.Request) -> bool | None:
    """`active=true|false`, or None (no filter) when absent."""
    text = request.query.get("active")
    if text is None:
        return None
    if text not in {"true", "false"}:
        msg = "invalid active: must be true or false"
        raise BadRequest(msg)
    return text == "true"


def _bearer(request: web.Request, *, allow_query: bool) -> str | None:
    header = request.headers.get(hdrs.AUTHORIZATION)
    if header is not None:
        scheme, _, token = header.partition(" ")
        return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    # Browsers cannot set headers on a WebSocket handshake, hence ?token= for /ws.
    return (request.query.get("token") or None) if allow_query else None


def bearer_token(request: web.Request, *, allow_query: bool = False) -> str:
    """The request's bearer token, else 401 "authentication required"."""
    token = _bearer(request, allow_query=allow_query)
    if token is None:
        msg = "authentication required"
        raise Unauthorized(msg)
    return token


def session_user(user_id: int | None) -> int:
    """The result of `SESSION_USER_SQL`, else 401 "invalid token"."""
    if user_id is None:
        msg = "invalid token"
        raise Unauthorized(msg)
    return int(user_id)


async def authenticate(request: web.Request, *, allow_query: bool = False) -> int:
    """The user id behind the request's bearer token (an active user, unexpired), else 401."""
    token = bearer_token(request, allow_query=allow_query)
    row = await fetchrow(request.app[SERVICES].orm.db(), SESSION_USER_SQL, token)
    return session_user(None if row is None else row["user_id"])


async def read_json(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object, else 400 "invalid json body"."""
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        msg = "invalid json body: expected an object"
        raise BadRequest(msg)
    return body
