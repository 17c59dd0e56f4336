"""The fast lane answers byte for byte as the aiohttp path does.

Two proxies over one echo upstream, both served by `ProxyAppRunner` as
`club-proxy run` serves them: one with the fast lane (the default), one with
`fast_lane=False`, which sends everything through aiohttp's web layer. Every
request carries its own X-Request-ID, so the answers must be identical but for
the `Date` value and the spelling of header names: aiohttp's parser gives
well-known names its own canonical case (`Etag`), the fast lane passes the
upstream's bytes (`ETag`). The upstream must see identical requests too.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from proxy.serving.app import PROXY, create_app
from tests.proxy import forward_support
from tests.proxy.forward_support import RawClient, RawResponse, legacy_routes, request, serve_proxy

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from tests.proxy.echo_upstream import EchoUpstream

# The shared fixture of the forwarding tests.
upstream = forward_support.upstream

# (method, target, extra headers): every kind of answer the lane relays itself.
CASES = [
    ("GET", "/echo", []),
    ("GET", "/echo?b=2&a=1&token=s%20ecret", [("Accept", "*/*"), ("X-Custom", "a,  b")]),
    ("GET", "/a%2Fb/./c/../d;p?x=%00", []),
    ("GET", "/echo", [("Connection", "X-Drop-Me"), ("X-Drop-Me", "1"), ("Keep-Alive", "5")]),
    ("GET", "/echo", [("X-Forwarded-For", "6.6.6.6"), ("Forwarded", "for=6.6.6.6")]),
    ("GET", "/echo", [("Via", "1.0 other-proxy"), ("Accept-Encoding", "gzip")]),
    ("GET", "/echo", [("Content-Length", "0")]),
    ("DELETE", "/echo", []),
    ("OPTIONS", "/echo", []),
    ("GET", "/gzip", [("Accept-Encoding", "gzip")]),
    ("HEAD", "/gzip", []),
    ("GET", "/cookies", []),
    ("GET", "/bigcookie", []),
    ("GET", "/big?size=300000", []),
    ("HEAD", "/big?size=300000", []),
    ("GET", "/chunked?size=100000", []),
    ("GET", "/chunked?size=0", []),
    ("GET", "/stream?size=200000", []),
    ("GET", "/status/204", []),
    ("GET", "/status/304", []),
    ("GET", "/bare", []),
    ("GET", "/hop", []),
    ("GET", "/early-hints", []),
]


@pytest.fixture
async def ports(upstream: EchoUpstream, tmp_path: Path) -> AsyncIterator[tuple[int, int]]:
    routes = legacy_routes(tmp_path, upstream.url)
    fast_app = create_app(routes_path=routes, reload_on_sighup=False)
    slow_app = create_app(routes_path=routes, reload_on_sighup=False, fast_lane=False)
    fast_runner, fast_port = await serve_proxy(fast_app)
    slow_runner, slow_port = await serve_proxy(slow_app)
    yield fast_port, slow_port
    # The case stayed in the fast lane: it was not handed to aiohttp.
    metrics = fast_app[PROXY].metrics
    assert metrics.fast_lane_requests == 1
    assert b"club_proxy_fast_lane_handoffs_total{" not in metrics.render()
    await fast_runner.cleanup()
    await slow_runner.cleanup()


def _comparable(response: RawResponse) -> RawResponse:
    headers = [(k.lower(), "<date>" if k.lower() == "date" else v) for k, v in response.headers]
    return RawResponse(
        response.status,
        response.reason,
        headers,
        response.body,
        response.complete,
        response.informational,
    )


async def _exchange(port: int, data: bytes, *, head: bool) -> RawResponse:
    client = await RawClient.connect(port)
    try:
        await client.send(data)
        return await client.read_response(head=head)
    finally:
        await client.close()


@pytest.mark.parametrize(("method", "target", "headers"), CASES)
async def test_fast_lane_answers_as_the_aiohttp_path(
    ports: tuple[int, int],
    upstream: EchoUpstream,
    method: str,
    target: str,
    headers: list[tuple[str, str]],
) -> None:
    fast_port, slow_port = ports
    data = request(method, target, headers=[("X-Request-ID", "parity-1"), *headers])
    head = method == "HEAD"
    fast = await _exchange(fast_port, data, head=head)
    fast_seen = upstream.received[-1]
    slow = await _exchange(slow_port, data, head=head)
    slow_seen = upstream.received[-1]
    assert _comparable(fast) == _comparable(slow)
    assert fast.header("X-Request-ID") == "parity-1"
    # The upstream saw the same request line and headers (its answer to /echo
    # names its own port, the same for both).
    assert fast_seen.request_line == slow_seen.request_line
    assert fast_seen.headers == slow_seen.headers
    if target.startswith("/echo") and method not in {"HEAD", "OPTIONS"}:
        assert json.loads(fast.body)["headers"] == json.loads(slow.body)["headers"]


async def test_fast_lane_keeps_the_upstreams_spelling_of_header_names(
    ports: tuple[int, int],
) -> None:
    fast_port, slow_port = ports
    data = request("GET", "/status/304")
    assert "ETag" in (await _exchange(fast_port, data, head=False)).names(keep_case=True)
    # aiohttp's path answers with its canonical `Etag`; the lane is the transparent one.
    assert "Etag" in (await _exchange(slow_port, data, head=False)).names(keep_case=True)
