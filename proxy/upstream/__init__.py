"""Upstreams: one keep-alive pool each, the thin HTTP/1.1 client, limits and failures.

Every coupling to aiohttp's client protocol internals (`ResponseHandler`)
lives in `proxy.upstream.exchange`; docs/dependency-internals.md lists them.
"""

from proxy.upstream.client import IDEMPOTENT, ConnectionPool, UpstreamUnreachable
from proxy.upstream.failures import UPSTREAM_FAILURES, upstream_failure
from proxy.upstream.limits import ClientLimits, route_timeout, upstream_timeout
from proxy.upstream.pools import UpstreamPool, UpstreamPools

__all__ = [
    "IDEMPOTENT",
    "UPSTREAM_FAILURES",
    "ClientLimits",
    "ConnectionPool",
    "UpstreamPool",
    "UpstreamPools",
    "UpstreamUnreachable",
    "route_timeout",
    "upstream_failure",
    "upstream_timeout",
]
