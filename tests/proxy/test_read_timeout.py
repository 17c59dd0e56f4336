"""The per-read timeout of pooled upstream connections (`proxy.upstream.exchange.ResponseProtocol`).

The timer is re-armed lazily (a deadline moved per read, one timer per
connection), so these pin what aiohttp's eager timer guaranteed: a read
resets it, a long answer that keeps arriving is never cut, and a connection
reused by a request with a shorter timeout times out on that shorter one.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest
from aiohttp import ServerTimeoutError

from proxy.upstream.client import ConnectionPool
from proxy.upstream.limits import ClientLimits
from tests.proxy import forward_support
from tests.proxy.echo_upstream import pattern

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from proxy.upstream.exchange import Exchange
    from tests.proxy.echo_upstream import EchoUpstream

upstream = forward_support.upstream
GUARD = 5.0


@pytest.fixture
async def pool(upstream: EchoUpstream) -> AsyncIterator[ConnectionPool]:
    pool = ConnectionPool(
        host="127.0.0.1",
        port=upstream.port,
        ssl=None,
        limit=1,
        keepalive_timeout=30,
        limits=ClientLimits(),
    )
    yield pool
    await pool.close()


def _head(target: str) -> bytes:
    return f"GET {target} HTTP/1.1\r\nHost: upstream.test\r\n\r\n".encode()


async def _get(pool: ConnectionPool, target: str, read_timeout: float) -> Exchange:
    return await pool.request(
        "GET", _head(target), None, chunked=False, connect_timeout=5, read_timeout=read_timeout
    )


async def _body(exchange: Exchange) -> bytes:
    parts = []
    while chunk := await exchange.content.readany():
        parts.append(chunk)
    exchange.finish()
    return b"".join(parts)


async def test_an_answer_that_keeps_arriving_is_never_cut(pool: ConnectionPool) -> None:
    # /stream pauses 50 ms between 64 KiB pieces: 3 MiB take ~2.4 s, over twice the
    # 1 s timeout, while each gap stays far below it. The upstream runs in this
    # process's event loop, so a stall of the whole process (CPU pressure) counts
    # against the gap: the timeout must stay well above the pause.
    size = 3 * 1024 * 1024
    exchange = await asyncio.wait_for(_get(pool, f"/stream?size={size}&pause=0.05", 1.0), GUARD)
    body = await asyncio.wait_for(_body(exchange), GUARD * 4)
    assert body == pattern(size)  # de-chunked by the parser


async def test_a_silent_upstream_times_out(pool: ConnectionPool) -> None:
    # ServerTimeoutError is the read timeout; the guard would raise a plain TimeoutError.
    with pytest.raises(ServerTimeoutError):
        await asyncio.wait_for(_get(pool, "/slow?delay=3", 0.2), GUARD)


async def test_a_reused_connection_times_out_on_the_shorter_timeout(
    pool: ConnectionPool, upstream: EchoUpstream
) -> None:
    first = await asyncio.wait_for(_get(pool, "/echo", 60), GUARD)
    await _body(first)
    assert pool.idle_connections == 1
    # The same connection (limit 1), now with 200 ms: the timer armed for 60 s
    # must not be the one that decides.
    with pytest.raises(ServerTimeoutError):
        await asyncio.wait_for(_get(pool, "/slow?delay=3", 0.2), GUARD)
    assert len(upstream.received) == 2
