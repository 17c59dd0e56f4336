"""Every migrated endpoint: (method, path, handler). routes.yaml may send these to `new`.

`club-proxy check` verifies each `to: new` route against the app built from
this table, so a route moved before its handler exists is caught before reload.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from aiohttp import web

from new_services.events import handlers as events
from new_services.messages import handlers as messages
from new_services.realtime import handlers as realtime
from new_services.registrations import handlers as registrations
from new_services.service import handlers as service
from new_services.users import handlers as users

if TYPE_CHECKING:
    from aiohttp.typedefs import Handler

__all__ = ["ENDPOINTS", "setup_routes"]

ENDPOINTS: Final[tuple[tuple[str, str, Handler], ...]] = (
    ("GET", "/health", service.health),
    ("GET", "/api/stats", service.stats),
    ("GET", "/api/users", users.list_users),
    ("GET", "/api/users/{id}", users.get_user),
    ("POST", "/api/users/{id}/messages", messages.send_message),
    ("GET", "/api/events", events.list_events),
    ("GET", "/api/events/{id}", events.get_event),
    ("POST", "/api/events/{id}/registrations", registrations.create_registration),
    ("DELETE", "/api/events/{id}/registrations/me", registrations.cancel_registration),
    ("GET", "/ws", realtime.websocket),
)


def _route(method: str, path: str, handler: Handler) -> web.RouteDef:
    # web.get also answers HEAD, as club-api's routes do (and lists it in Allow).
    return web.get(path, handler) if method == "GET" else web.route(method, path, handler)


def setup_routes(app: web.Application) -> None:
    app.router.add_routes([_route(method, path, handler) for method, path, handler in ENDPOINTS])
