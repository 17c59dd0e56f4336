"""`GET /health` and `GET /api/stats`."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Final

import redis.exceptions
from tortoise.exceptions import BaseORMException

from new_services.http import json_response
from new_services.services import SERVICES

if TYPE_CHECKING:
    from aiohttp import web

__all__ = ["health", "stats"]

logger = logging.getLogger(__name__)

# Five counts in one round trip; through the ORM this would be five queries.
_STATS_SQL: Final = """
    SELECT (SELECT count(*) FROM users) AS users,
           (SELECT count(*) FROM users WHERE active) AS active_users,
           (SELECT count(*) FROM events) AS events,
           (SELECT count(*) FROM events WHERE active) AS active_events,
           (SELECT count(*) FROM registrations) AS registrations
"""


async def health(request: web.Request) -> web.Response:
    """200 when PostgreSQL and Redis answer, 503 naming the first one that does not."""
    services = request.app[SERVICES]
    try:
        await services.orm.db().execute_query("SELECT 1")
    except (BaseORMException, OSError):
        logger.warning("new_services.health_failed", extra={"dependency": "postgres"})
        return json_response({"error": "postgres unavailable"}, status=503)
    try:
        await services.redis.ping()
    except (redis.exceptions.RedisError, OSError):
        logger.warning("new_services.health_failed", extra={"dependency": "redis"})
        return json_response({"error": "redis unavailable"}, status=503)
    info = services.settings.info
    return json_response({"status": "ok", "service": info.name, "version": info.version})


async def stats(request: web.Request) -> web.Response:
    rows = await request.app[SERVICES].orm.db().execute_query_dict(_STATS_SQL)
    return json_response(dict(rows[0]) if rows else {})
