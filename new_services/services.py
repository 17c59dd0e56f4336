"""The DI container: every resource the handlers use, opened in one `cleanup_ctx`.

`Services` is a frozen value under the typed `SERVICES` key; a handler takes
what it needs (`request.app[SERVICES].cache`) and nothing is global except
what Tortoise itself keeps (see `_tortoise`). Resources open in dependency
order and close in reverse through one `AsyncExitStack`:

    Tortoise (own asyncpg pool) -> Redis -> Cache(Packager) -> WebSocketHub -> PgQueue
      -> their stats in prometheus-client's default REGISTRY (`_exported`)
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from aiohttp import web
from prometheus_client import REGISTRY
from tortoise.context import TortoiseContext, get_current_context, set_global_context

from legacy_compat import Cache, DebounceMode, Packager, PgQueue, StatsCollector, WebSocketHub
from new_services.db import tortoise_config
from new_services.realtime.events import route_trigger_events
from new_services.realtime.sockets import LocalSockets

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from legacy_compat import Settings

__all__ = ["SERVICES", "Services", "services_ctx"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class Services:
    """What the new handlers depend on.

    Attributes:
        settings: the legacy config (the same files club-api reads).
        orm: this app's Tortoise context (models resolve it as the global fallback).
        redis: the shared Redis client.
        cache: the legacy Packager-format cache (same keys and bytes as club-api).
        hub: cross-instance WebSocket delivery (direct messages).
        sockets: this instance's sockets (trigger events, the `delivered` count).
        queue: PgQueue on channel `events` (trigger events; `queue.notify` to publish).
        event_cache_ttl: settings.toml `EVENT_CACHE_TTL`, seconds.
        ws_heartbeat: settings.toml `WS_HEARTBEAT`, seconds.
    """

    settings: Settings
    orm: TortoiseContext
    redis: aioredis.Redis
    cache: Cache
    hub: WebSocketHub
    sockets: LocalSockets
    queue: PgQueue
    event_cache_ttl: float
    ws_heartbeat: float


SERVICES = web.AppKey("new_services.services", Services)


def _legacy_float(settings: Settings, key: str, default: float) -> float:
    value: Any = settings.legacy.get(key, default)
    return float(value)


@contextlib.asynccontextmanager
async def _tortoise(settings: Settings) -> AsyncIterator[TortoiseContext]:
    """Init Tortoise as the process-wide fallback context; close it (and clear it) on exit.

    The global fallback makes the ORM visible from every task, whatever task
    ran startup (compat-findings §3.5). Tortoise allows one such context per
    process, so one new_services app per process: a second one is refused here
    rather than silently querying the first one's database.
    """
    if get_current_context() is not None:
        msg = "a Tortoise context is already active in this process (one new_services app per process)"
        raise RuntimeError(msg)
    ctx = TortoiseContext()
    try:
        # Global before init: model setup during init already resolves the context.
        set_global_context(ctx)
        await ctx.init(config=tortoise_config(settings))
        yield ctx
    finally:
        await ctx.close_connections()


@contextlib.contextmanager
def _exported(collector: StatsCollector) -> Iterator[None]:
    """Register `collector` in the default REGISTRY while the app runs.

    The default registry, not the proxy's: this app must not depend on the
    proxy. In-process, the proxy's /-/metrics renders the default registry
    too, so the counters show up there; a process running this app alone can
    serve it with any prometheus-client exporter.
    """
    REGISTRY.register(collector)
    try:
        yield
    finally:
        REGISTRY.unregister(collector)


async def services_ctx(app: web.Application, *, settings: Settings) -> AsyncIterator[None]:
    """cleanup_ctx: open everything, publish `Services`, close in reverse."""
    async with contextlib.AsyncExitStack() as stack:
        orm = await stack.enter_async_context(_tortoise(settings))
        redis = aioredis.from_url(settings.redis_url)
        stack.push_async_callback(redis.aclose)
        cache = Cache(redis, packager=Packager())
        heartbeat = _legacy_float(settings, "WS_HEARTBEAT", 30.0)
        hub = await stack.enter_async_context(WebSocketHub(redis, heartbeat=heartbeat))
        sockets = LocalSockets()
        # LEGACY mode with no pause: one event per call, in commit order, without
        # the legacy 2 s sleep (COALESCE would merge a register/cancel/register run).
        queue = PgQueue(settings, channel="events", mode=DebounceMode.LEGACY, window=0.0)
        queue.on_any(partial(route_trigger_events, sockets=sockets, cache=cache))
        await stack.enter_async_context(queue)
        stack.enter_context(_exported(StatsCollector(cache=cache, hub=hub, queue=queue)))
        app[SERVICES] = Services(
            settings=settings,
            orm=orm,
            redis=redis,
            cache=cache,
            hub=hub,
            sockets=sockets,
            queue=queue,
            event_cache_ttl=_legacy_float(settings, "EVENT_CACHE_TTL", 60.0),
            ws_heartbeat=heartbeat,
        )
        logger.info("new_services.started", extra={"service": settings.info.name})
        yield
