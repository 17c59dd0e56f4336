"""Upstream limits: response header sizes, read buffering and timeouts.

`ClientLimits` applies to every upstream connection of a process;
`upstream_timeout` gives an upstream's timeouts from routes.yaml, and
`route_timeout` a route's overrides of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp

if TYPE_CHECKING:
    from proxy.routing.model import Route, Upstream

__all__ = ["ClientLimits", "route_timeout", "upstream_timeout"]


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
