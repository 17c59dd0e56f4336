"""The composition root: `create_app(settings)` for the proxy (routes.yaml `new:`) or alone.

The proxy calls it with `legacy_compat.load_settings(config_dir)`, the same
config club-api reads, and runs the app's cleanup_ctx in its own process.
Building the app opens nothing: resources start with the app (`services_ctx`).
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from aiohttp import WSCloseCode, web

from new_services.http import error_middleware
from new_services.registry import setup_routes
from new_services.services import SERVICES, services_ctx

if TYPE_CHECKING:
    from legacy_compat import Settings

__all__ = ["create_app"]


async def _close_websockets(app: web.Application) -> None:
    """On shutdown, close sockets first so the server does not wait for clients."""
    services = app.get(SERVICES)
    if services is not None:
        await services.hub.on_shutdown(app)
        await services.sockets.close_all(WSCloseCode.GOING_AWAY)


def create_app(settings: Settings) -> web.Application:
    """The new_services application for the given legacy config."""
    app = web.Application(middlewares=[error_middleware])
    app.cleanup_ctx.append(partial(services_ctx, settings=settings))
    app.on_shutdown.append(_close_websockets)
    setup_routes(app)
    return app
