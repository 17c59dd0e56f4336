"""One keep-alive connection pool per upstream.

Plain requests go through the pool's thin client (`proxy.upstream.client`);
WebSocket upgrades through its aiohttp `ClientSession`, which opens
connections only when one is used and never caps them (an upgraded
connection never returns to a pool).
Pools follow the route table: `sync(table)` builds pools for new or changed
upstreams and retires the old ones, which close once the last request using
them finishes, so a reload never cuts a request in flight. Sessions never add
headers of their own, never decompress and keep no cookies: the proxy is not a
browser.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import aiohttp

from proxy.upstream.client import ConnectionPool
from proxy.upstream.handshake import refusal_middleware
from proxy.upstream.limits import ClientLimits, upstream_timeout

if TYPE_CHECKING:
    from collections.abc import Iterable

    from proxy.routing.model import Upstream

__all__ = ["UpstreamPool", "UpstreamPools"]

logger = logging.getLogger(__name__)

# aiohttp's client adds these unless told not to (pitfall 24); the client's own
# values, when it sent them, travel in the forwarded headers instead.
SKIP_AUTO_HEADERS: Final = frozenset({"User-Agent", "Accept", "Accept-Encoding", "Content-Type"})


@dataclass(slots=True, kw_only=True)
class UpstreamPool:
    """A live session for one `Upstream` value and the requests using it."""

    upstream: Upstream
    # WebSocket upgrades only; plain requests use `client`.
    session: aiohttp.ClientSession
    client: ConnectionPool
    # The upstream URL without a trailing slash; the raw request target is appended.
    base: str
    # `Host` for a request that came without one (HTTP/1.0), as aiohttp's client sent it.
    host_header: str
    timeout: aiohttp.ClientTimeout
    active: int = 0
    retired: bool = False

    async def close(self) -> None:
        await asyncio.gather(self.session.close(), self.client.close())


@dataclass(slots=True)
class UpstreamPools:
    """Every upstream's pool, kept in step with the active route table."""

    limits: ClientLimits = field(default_factory=ClientLimits)
    _current: dict[str, UpstreamPool] = field(default_factory=dict)
    _retired: list[UpstreamPool] = field(default_factory=list)
    _closing: set[asyncio.Task[None]] = field(default_factory=set)

    def _open(self, upstream: Upstream) -> UpstreamPool:
        connector = aiohttp.TCPConnector(
            # An upgraded connection counts as in use for its whole life and
            # never returns: a limit here would cap concurrent WebSockets
            # (nginx has no such cap), not size a pool.
            limit=0,
            limit_per_host=0,
            keepalive_timeout=upstream.keepalive_timeout,
        )
        timeout = upstream_timeout(upstream)
        session = aiohttp.ClientSession(
            connector=connector,
            # Bounds a handshake: the TCP connect, then the wait for the answer.
            timeout=timeout,
            middlewares=(refusal_middleware,),
            auto_decompress=False,
            skip_auto_headers=SKIP_AUTO_HEADERS,
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
            requote_redirect_url=False,
            max_line_size=self.limits.max_line_size,
            max_field_size=self.limits.max_field_size,
            max_headers=self.limits.max_headers,
            read_bufsize=self.limits.read_bufsize,
        )
        url = upstream.url
        host, port = url.raw_host or "", url.port or 80
        client = ConnectionPool(
            host=host,
            port=port,
            ssl=ssl.create_default_context() if url.scheme == "https" else None,
            limit=upstream.max_connections,
            keepalive_timeout=upstream.keepalive_timeout,
            limits=self.limits,
        )
        base = str(url).rstrip("/")
        logger.debug("proxy.pool_opened", extra={"upstream": upstream.name, "url": base})
        return UpstreamPool(
            upstream=upstream,
            session=session,
            client=client,
            base=base,
            host_header=url.host_port_subcomponent or host,
            timeout=timeout,
        )

    def sync(self, upstreams: Iterable[Upstream]) -> None:
        """Open pools for new or changed upstreams; retire the others."""
        wanted = {u.name: u for u in upstreams}
        for name, pool in list(self._current.items()):
            new = wanted.get(name)
            if new is None or new != pool.upstream:
                del self._current[name]
                self._retire(pool)
            else:
                # Same settings: keep the connections, adopt the new object so
                # the identity fast path in `acquire` hits.
                pool.upstream = new
        for name, upstream in wanted.items():
            if name not in self._current:
                self._current[name] = self._open(upstream)

    def acquire(self, upstream: Upstream) -> UpstreamPool:
        """The pool for `upstream`, counted as in use until `release`."""
        pool = self._current.get(upstream.name)
        if pool is None or (pool.upstream is not upstream and pool.upstream != upstream):
            pool = self._find_retired(upstream)
        pool.active += 1
        return pool

    def release(self, pool: UpstreamPool) -> None:
        pool.active -= 1
        if pool.retired and pool.active == 0:
            self._close_later(pool)

    def _find_retired(self, upstream: Upstream) -> UpstreamPool:
        # A request still on an older table: use that table's pool while it
        # lives, or a one-off pool that closes when the request is done.
        for pool in self._retired:
            if pool.upstream == upstream:
                return pool
        pool = self._open(upstream)
        self._retire(pool, close_if_idle=False)
        return pool

    def _retire(self, pool: UpstreamPool, *, close_if_idle: bool = True) -> None:
        pool.retired = True
        self._retired.append(pool)
        if close_if_idle and pool.active == 0:
            self._close_later(pool)

    def _close_later(self, pool: UpstreamPool) -> None:
        if pool in self._retired:
            self._retired.remove(pool)
        task = asyncio.get_running_loop().create_task(pool.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        """Close every pool, current and retired."""
        pools = [*self._current.values(), *self._retired]
        self._current.clear()
        self._retired.clear()
        await asyncio.gather(*(p.close() for p in pools), *self._closing)

    @property
    def current(self) -> dict[str, UpstreamPool]:
        """The pools of the active table, by upstream name (read-only use)."""
        return self._current
