"""Upstream limits: response header sizes, read buffering and timeouts.

`ClientLimits` applies to every upstream connection of a process;
`upstream_timeout` gives an upstream's timeouts from routes.yaml, and
`route_timeout` a route's overrides of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp

from proxy.routing.model import DEFAULT_SEND_TIMEOUT

if TYPE_CHECKING:
    from proxy.routing.model import Route, Upstream

__all__ = [
    "ClientBodyTimeout",
    "ClientLimits",
    "body_limits",
    "route_timeout",
    "send_timeout",
    "upstream_timeout",
]


class ClientBodyTimeout(Exception):
    """The client sent no request body bytes for its client body timeout (answered 408)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientLimits:
    """Upstream response header limits (above aiohttp's 8190 so big cookies pass)
    and the read buffer size: a connection stops reading while this much of an
    answer is waiting for the client (twice this in flight at most)."""

    max_line_size: int = 65536
    max_field_size: int = 65536
    max_headers: int = 256
    read_bufsize: int = 1 << 16


def upstream_timeout(upstream: Upstream) -> aiohttp.ClientTimeout:
    """An upstream's timeouts: connect, and per read (no total: bodies and streams may be long)."""
    return aiohttp.ClientTimeout(
        total=None,
        connect=upstream.connect_timeout,
        sock_connect=upstream.connect_timeout,
        sock_read=upstream.read_timeout,
    )


def route_timeout(route: Route | None, upstream: Upstream) -> aiohttp.ClientTimeout | None:
    """The route's own timeouts on `upstream`, or None when it sets none."""
    if route is None:
        return None
    overrides = route.timeouts
    if overrides.connect is None and overrides.read is None:
        return None
    connect = overrides.connect or upstream.connect_timeout
    return aiohttp.ClientTimeout(
        total=None,
        connect=connect,
        sock_connect=connect,
        sock_read=overrides.read or upstream.read_timeout,
    )


def body_limits(route: Route | None, upstream: Upstream) -> tuple[int, float]:
    """(request buffering size, client body timeout) for a request: the route's, else the upstream's."""
    if route is None:
        return upstream.request_buffering, upstream.client_body_timeout
    buffering = route.request_buffering
    return (
        upstream.request_buffering if buffering is None else buffering,
        route.timeouts.client_body or upstream.client_body_timeout,
    )


def send_timeout(route: Route | None, upstream: Upstream | None) -> float:
    """How long a client may leave the answer unread: the route's, the upstream's, or 60 s."""
    if route is not None and route.timeouts.send is not None:
        return route.timeouts.send
    return upstream.send_timeout if upstream is not None else DEFAULT_SEND_TIMEOUT
