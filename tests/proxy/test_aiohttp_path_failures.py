"""Failures on aiohttp's request path (`proxy.webpath.relay`), not the fast lane's.

`club-proxy run` starts every connection in the fast lane (`proxy.fastlane.lane`),
so the failure tests of the transparency suite mostly exercise
`proxy.fastlane.call`. Here each request reaches `proxy.webpath.relay` one of the two
ways it does in production: a request with a body (the lane hands the
connection to aiohttp, reason "body"), or a bodiless GET to a proxy served
with `fast_lane=False` (`club-proxy run --no-fast-lane`). Which way was taken
is checked from the metrics, so a change to the lane's rules cannot quietly
move these tests onto the other path.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

import pytest

from proxy.serving.app import PROXY, create_app
from proxy.telemetry.accesslog import AccessLog
from tests.proxy import forward_support
from tests.proxy.echo_upstream import pattern
from tests.proxy.forward_support import TIMEOUT, RawClient, legacy_routes, request, serve_proxy

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from pathlib import Path

    from aiohttp import web

    from proxy.serving.protocol import ProxyAppRunner
    from tests.proxy.echo_upstream import EchoUpstream

# The shared fixture of the forwarding tests.
upstream = forward_support.upstream

MiB = 1 << 20


@dataclass(frozen=True)
class Way:
    """How a request reaches `proxy.webpath.relay`."""

    method: str
    body: bytes
    fast_lane: bool

    def request(self, target: str, *, request_id: str) -> bytes:
        return request(self.method, target, headers=[("X-Request-ID", request_id)], body=self.body)

    def check_taken(self, app: web.Application) -> None:
        metrics = app[PROXY].metrics
        assert metrics.fast_lane_requests == 0
        handoffs = re.findall(
            rb'^club_proxy_fast_lane_handoffs_total\{reason="([^"]+)"\} (\S+)$',
            metrics.render(),
            re.MULTILINE,
        )
        assert handoffs == ([(b"body", b"1.0")] if self.fast_lane else [])


WAYS = pytest.mark.parametrize(
    "way",
    [
        Way("POST", b"payload", fast_lane=True),  # handed over by the lane: it has a body
        Way("GET", b"", fast_lane=False),  # no lane at all
    ],
    ids=["post-handed-over", "get-without-fast-lane"],
)


class _AccessLines(logging.Handler):
    """The access entries of one proxy, as `AccessLog` hands them to its logger."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.entries: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.entries.append(record.__dict__["access"])

    def of(self, request_id: str) -> dict[str, Any]:
        (entry,) = [e for e in self.entries if e["request_id"] == request_id]
        return entry


_REQUESTS = re.compile(r"^club_proxy_requests_total\{(.*)\} (\S+)$", re.MULTILINE)
_UPSTREAM_ERRORS = re.compile(
    r'^club_proxy_upstream_errors_total\{kind="([^"]+)",target="legacy"\} (\S+)$', re.MULTILINE
)


@dataclass
class Served:
    """One proxy under test: its app, port and access entries."""

    app: web.Application
    port: int
    lines: _AccessLines

    def has_entry(self, request_id: str) -> bool:
        return any(e["request_id"] == request_id for e in self.lines.entries)

    def requests_total(self, method: str, status: int) -> float:
        text = self.app[PROXY].metrics.render().decode()
        labels = f'method="{method}",route="(default)",status="{status}",target="legacy"'
        return sum(float(m[2]) for m in _REQUESTS.finditer(text) if m[1] == labels)

    def upstream_errors(self) -> dict[str, float]:
        text = self.app[PROXY].metrics.render().decode()
        return {m[1]: float(m[2]) for m in _UPSTREAM_ERRORS.finditer(text)}


Serve: TypeAlias = "Callable[[Way], Awaitable[Served]]"


@pytest.fixture
async def serve(
    upstream: EchoUpstream, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Serve]:
    """Start proxies to `upstream`, served as `club-proxy run` serves them."""
    runners: list[ProxyAppRunner] = []

    async def start(way: Way) -> Served:
        logger = logging.getLogger(f"tests.aiohttp_path.{request.node.name}")
        logger.setLevel(logging.INFO)
        logger.propagate = False
        lines = _AccessLines()
        logger.handlers[:] = [lines]
        routes = legacy_routes(tmp_path, upstream.url)
        app = create_app(
            routes_path=routes,
            reload_on_sighup=False,
            fast_lane=way.fast_lane,
            access_log=AccessLog(logger=logger),
        )
        runner, port = await serve_proxy(app)
        runners.append(runner)
        return Served(app, port, lines)

    yield start
    for runner in runners:
        await runner.cleanup()


async def _wait_until(predicate: Callable[[], bool]) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), TIMEOUT)


@WAYS
async def test_a_client_leaving_mid_download_closes_the_upstream_connection(
    serve: Serve, upstream: EchoUpstream, way: Way
) -> None:
    served = await serve(way)
    client = await RawClient.connect(served.port)
    await client.send(way.request(f"/big?size={200 * MiB}", request_id="gone-1"))
    assert (await client.read_head())[0] == 200
    await asyncio.wait_for(client.reader.readexactly(64 * 1024), TIMEOUT)
    client.writer.transport.abort()
    # /big watches its connection while it sends: the proxy closed it, rather
    # than leaving the upstream blocked on a full socket.
    await asyncio.wait_for(upstream.peer_gone.wait(), TIMEOUT)
    await _wait_until(lambda: served.has_entry("gone-1"))
    entry = served.lines.of("gone-1")
    assert (entry["status"], entry["aborted"]) == (499, "client")
    assert served.requests_total(way.method, 499) == 1
    assert served.upstream_errors() == {}
    pool = served.app[PROXY].pools.current["legacy"].client
    assert (pool.open_connections, pool.idle_connections) == (0, 0)
    assert served.app[PROXY].metrics.in_flight == 0
    way.check_taken(served.app)


@WAYS
@pytest.mark.parametrize(
    "target",
    [
        "/die?size=100000",  # Content-Length 200000, 100000 sent
        "/die-chunked?size=100000",  # one chunk, no last chunk
    ],
)
async def test_an_upstream_dying_mid_body_cuts_the_client_connection(
    serve: Serve, way: Way, target: str
) -> None:
    served = await serve(way)
    client = await RawClient.connect(served.port)
    try:
        await client.send(way.request(target, request_id="died-1"))
        response = await client.read_response()
        # Too late for a 502: the answer is visibly incomplete (short of its
        # Content-Length, or without the last chunk) and the connection gone,
        # never a clean, shorter success.
        assert response.status == 200
        assert not response.complete
        assert response.body == pattern(len(response.body))
        assert len(response.body) <= 100000
        assert await client.rest_until_close() == b""
    finally:
        await client.close()
    await _wait_until(lambda: served.has_entry("died-1"))
    entry = served.lines.of("died-1")
    assert (entry["status"], entry["aborted"]) == (200, "upstream")
    assert served.upstream_errors() == {"aborted": 1}
    assert served.app[PROXY].metrics.in_flight == 0
    way.check_taken(served.app)
