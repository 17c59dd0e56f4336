"""The club-api URL map (README.md documents every route with curl)."""

from __future__ import annotations

from aiohttp import web

from examples.club_api.app.handlers import events, messages, registrations, service, users, ws

__all__ = ["setup_routes"]


def setup_routes(app: web.Application) -> None:
    app.router.add_routes(
        [
            web.get("/health", service.health),
            web.get("/api/stats", service.stats),
            web.get("/api/users", users.list_users),
            web.get("/api/users/{id}", users.get_user),
            web.post("/api/users/{id}/messages", messages.send_message),
            web.get("/api/events", events.list_events),
            web.get("/api/events/{id}", events.get_event),
            web.post("/api/events/{id}/registrations", registrations.create_registration),
            web.delete("/api/events/{id}/registrations/me", registrations.cancel_registration),
            web.get("/ws", ws.websocket),
        ]
    )
