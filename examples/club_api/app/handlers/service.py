"""`GET /health` and `GET /api/stats`."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Final

import redis.exceptions

from examples.club_api.app.core.api import API
from examples.club_api.app.core.errors import json_response
from legacy_compat import DatabaseError

if TYPE_CHECKING:
    from aiohttp import web

__all__ = ["health", "stats"]

logger = logging.getLogger(__name__)

_STATS_SQL: Final = """
    SELECT (SELECT count(*) FROM users) AS users,
           (SELECT count(*) FROM users WHERE active) AS active_users,
           (SELECT count(*) FROM events) AS events,
           (SELECT count(*) FROM events WHERE active) AS active_events,
           (SELECT count(*) FROM registrations) AS registrations
"""


async def health(request: web.Request) -> web.Response:
    """200 when PostgreSQL and Redis answer, 503 naming the first one that does not."""
    api = request.app[API]
    try:
        await api.pg.club.fetchval("SELECT 1")
    except DatabaseError:
        logger.warning("club_api.health_failed", extra={"dependency": "postgres"})
        return json_response({"error": "postgres unavailable"}, status=503)
    try:
        await api.redis.ping()
    except (redis.exceptions.RedisError, OSError):
        logger.warning("club_api.health_failed", extra={"dependency": "redis"})
        return json_response({"error": "redis unavailable"}, status=503)
    info = api.settings.info
    return json_response({"status": "ok", "service": info.name, "version": info.version})


async def stats(request: web.Request) -> web.Response:
    api = request.app[API]
    row = await api.pg.club.fetchrow(_STATS_SQL)
    return json_response(dict(row) if row is not None else {})
