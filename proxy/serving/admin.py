"""The admin API: a separate app on its own port, loopback by default.

    GET /-/health    200 while the process runs
    GET /-/ready     200 once the proxy serves, 503 before and while draining
    GET /-/routes    the active table, its digest and the last reload result
    GET /-/metrics   Prometheus text (the proxy's registry, then the default one:
                     process_*, python_*, in-process new_services club_compat_*)
    GET /-/shadow                       every shadowed route: counts, match rate, verdict,
                                        difference groups; and where results live
    GET /-/shadow/{route_id}            one route, with examples per difference group
    POST /-/shadow/{route_id}/reset     start the route's results afresh
    GET /-/shadow/{route_id}/suggest    the ignore rules learned noise suggests (JSON and YAML)
    GET /-/dashboard, GET /-/stats      the dashboard page and its traffic numbers (`dashboard`)

Bound anywhere but loopback, every endpoint requires `Authorization: Bearer
<token>`; `check_admin_binding` refuses to start without one (Envoy's edge
guide: restrict access to the admin endpoint).
"""

from __future__ import annotations

import hmac
import ipaddress
from typing import TYPE_CHECKING, Any

from aiohttp import web

from proxy.core.state import PROXY, Proxy
from proxy.errors import ProxyError
from proxy.serving.dashboard import add_dashboard
from proxy.shadow.results import suggestions_yaml
from proxy.telemetry.metrics import CONTENT_TYPE

if TYPE_CHECKING:
    from aiohttp.typedefs import Handler

    from proxy.shadow.results import ShadowBook

__all__ = ["AdminBindError", "check_admin_binding", "create_admin_app", "is_loopback"]

_ADMIN_PROXY = web.AppKey("admin_proxy", Proxy)


class AdminBindError(ProxyError):
    """The admin API would be reachable from other hosts without a token."""


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or `localhost`) only accepts local connections."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_admin_binding(host: str, token: str | None) -> None:
    """Raise AdminBindError when `host` is not loopback and no token is set."""
    if not token and not is_loopback(host):
        msg = f"admin API on {host!r} is reachable from other hosts: set --admin-token"
        raise AdminBindError(msg)


def _bearer_middleware(token: str) -> Any:
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        given = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            return web.json_response(
                {"error": "unauthorized"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="club-proxy admin"'},
            )
        return await handler(request)

    return require_token


def _proxy(request: web.Request) -> Proxy:
    return request.app[_ADMIN_PROXY]


async def health(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    proxy = _proxy(request)
    body = {"ready": proxy.ready, "routes_digest": proxy.watcher.table.digest}
    return web.json_response(body, status=200 if proxy.ready else 503)


async def routes(request: web.Request) -> web.Response:
    watcher = _proxy(request).watcher
    last = watcher.last_result
    return web.json_response(
        {
            "active": watcher.table.as_dict(),
            "last_reload": {
                "ok": last.ok,
                "at": last.at,
                "digest": last.digest,
                "error": last.error,
                "changed": last.changed,
                "trigger": last.trigger,
            },
            "reloads": {"success": watcher.reload_successes, "failure": watcher.reload_failures},
        }
    )


def _book(request: web.Request) -> ShadowBook:
    shadow = _proxy(request).shadow
    if shadow is None:
        raise web.HTTPNotFound(
            text='{"error": "shadow is off in this process"}', content_type="application/json"
        )
    return shadow.book


def _unknown_route(route_id: str) -> web.Response:
    return web.json_response({"error": f"no shadow results for route {route_id!r}"}, status=404)


async def shadow(request: web.Request) -> web.Response:
    return web.json_response(await _book(request).report())


async def shadow_route(request: web.Request) -> web.Response:
    route_id = request.match_info["route_id"]
    found = await _book(request).report(route_id, examples=True)
    return _unknown_route(route_id) if found is None else web.json_response(found)


async def shadow_reset(request: web.Request) -> web.Response:
    route_id = request.match_info["route_id"]
    if not await _book(request).reset(route_id):
        return _unknown_route(route_id)
    return web.json_response({"id": route_id, "reset": True})


async def shadow_suggest(request: web.Request) -> web.Response:
    route_id = request.match_info["route_id"]
    book = _book(request)
    found = await book.suggestions(route_id)
    return web.json_response(
        {
            "id": route_id,
            "suggestions": [suggestion.as_dict() for suggestion in found],
            "yaml": suggestions_yaml(route_id, found),
        }
    )


async def metrics(request: web.Request) -> web.Response:
    body = _proxy(request).metrics.exposition()
    response = web.Response(body=body)
    response.headers["Content-Type"] = CONTENT_TYPE
    return response


def create_admin_app(proxy_app: web.Application, *, token: str | None = None) -> web.Application:
    """The admin app for the proxy built by `create_app` (token: required bearer token)."""
    app = web.Application(middlewares=[_bearer_middleware(token)] if token else [])
    app[_ADMIN_PROXY] = proxy_app[PROXY]
    app.router.add_get("/-/health", health)
    app.router.add_get("/-/ready", ready)
    app.router.add_get("/-/routes", routes)
    app.router.add_get("/-/metrics", metrics)
    app.router.add_get("/-/shadow", shadow)
    app.router.add_get("/-/shadow/{route_id}", shadow_route)
    app.router.add_post("/-/shadow/{route_id}/reset", shadow_reset)
    app.router.add_get("/-/shadow/{route_id}/suggest", shadow_suggest)
    add_dashboard(app, app[_ADMIN_PROXY])
    return app
