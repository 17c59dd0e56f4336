"""The global application context of club-api (legacy `app/core/api.py`).

Legacy handlers reach everything through one object, `api`: `api.pg.club`
(PgBank), `api.cache` (Redis through the Packager format), `api.queue`
(PgQueue in legacy debounce mode) and `api.store['websockets']`, the live
sockets of THIS process. aiohttp forbids attributes on `Application`, so the
object sits under the `API` key: `api = request.app[API]`.

The flaw is kept on purpose: `store['websockets']` is process memory. With two
instances, a message produced on instance 2 for a user connected to instance 1
is lost (docs/architecture.md, the legacy side); `legacy_compat.WebSocketHub` is the fix.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, TypedDict

import redis.asyncio as aioredis
from aiohttp import WSCloseCode, web

from examples.club_api.app.core.errors import legacy_errors
from examples.club_api.app.models import notification
from legacy_compat import Cache, DebounceMode, Packager, PgBank, PgQueue

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from legacy_compat import Settings

__all__ = ["API", "ClubApi", "Store", "create_app"]

logger = logging.getLogger(__name__)


class Store(TypedDict):
    """Process-local state, keyed like the legacy `self.store`."""

    # user id -> that user's open sockets on this instance.
    websockets: dict[int, set[web.WebSocketResponse]]


@dataclass(frozen=True, slots=True, kw_only=True)
class ClubApi:
    """Everything a legacy handler uses (see the module docstring)."""

    settings: Settings
    pg: PgBank
    redis: aioredis.Redis
    cache: Cache
    queue: PgQueue
    store: Store
    event_cache_ttl: float
    ws_heartbeat: float


API = web.AppKey("api", ClubApi)


def _legacy_float(settings: Settings, key: str, default: float) -> float:
    value: Any = settings.legacy.get(key, default)
    return float(value)


async def _api_ctx(app: web.Application, *, settings: Settings) -> AsyncIterator[None]:
    """Open PgBank, Redis and PgQueue in order; close them in reverse."""
    store: Store = {"websockets": {}}
    async with contextlib.AsyncExitStack() as stack:
        pg = await PgBank.connect(settings)
        stack.push_async_callback(pg.close)
        redis = aioredis.from_url(settings.redis_url)
        stack.push_async_callback(redis.aclose)
        cache = Cache(redis, packager=Packager())
        queue = PgQueue(
            settings,
            channel="events",
            mode=DebounceMode.LEGACY,
            window=_legacy_float(settings, "PGQUEUE_DEBOUNCE", 2.0),
        )
        queue.on_any(partial(notification.route_events, store=store, cache=cache))
        await stack.enter_async_context(queue)
        app[API] = ClubApi(
            settings=settings,
            pg=pg,
            redis=redis,
            cache=cache,
            queue=queue,
            store=store,
            event_cache_ttl=_legacy_float(settings, "EVENT_CACHE_TTL", 60.0),
            ws_heartbeat=_legacy_float(settings, "WS_HEARTBEAT", 30.0),
        )
        logger.info("club_api.started", extra={"service": settings.info.name})
        yield


async def _close_websockets(app: web.Application) -> None:
    """On shutdown, close live sockets so the server does not wait for clients."""
    sockets = [ws for group in app[API].store["websockets"].values() for ws in group]
    for ws in sockets:
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")


def create_app(settings: Settings) -> web.Application:
    """The club-api application for the given legacy config."""
    from examples.club_api.app.routes import setup_routes  # noqa: PLC0415  (handlers import API)

    app = web.Application(middlewares=[legacy_errors])
    app.cleanup_ctx.append(partial(_api_ctx, settings=settings))
    app.on_shutdown.append(_close_websockets)
    setup_routes(app)
    return app
