"""Hostile input at the front door, one section per finding of the hostile-input probe.

1. Empty lines before a request: bounded, then 400 and closed; the lane keeps
   none of them and never copies a head whole per read.
2. Slow request bodies must not hold an upstream's connection pool.
3. An Upgrade the proxy will not perform never desynchronises request framing.
4. Smaller deviations from nginx and the RFCs.

Each test drives the proxy through a real socket as raw bytes, on both request
paths where the behaviour is the proxy's (`fast_lane=True`, how `club-proxy run`
serves, and `False`, aiohttp's web path from the first byte), against a
recording upstream (`EchoUpstream`) on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import TYPE_CHECKING, Any

import pytest

from proxy.fastlane.lane import MAX_BLANK_BYTES
from proxy.serving.app import ServerLimits, create_app
from tests.proxy import forward_support
from tests.proxy.forward_support import TIMEOUT, RawClient, legacy_routes, request, serve_proxy

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from pathlib import Path

    from tests.proxy.echo_upstream import EchoUpstream

upstream = forward_support.upstream

BOTH_PATHS = pytest.mark.parametrize("fast_lane", [True, False], ids=["fast-lane", "aiohttp-path"])


@pytest.fixture
async def serve(
    tmp_path: Path, upstream: EchoUpstream
) -> AsyncIterator[Callable[..., Awaitable[int]]]:
    """Serve a proxy to `upstream` as `club-proxy run` does; returns its port."""
    runners = []

    async def start(*, fast_lane: bool = True, **kwargs: Any) -> int:
        app = create_app(
            routes_path=legacy_routes(tmp_path, upstream.url),
            reload_on_sighup=False,
            fast_lane=fast_lane,
            **kwargs,
        )
        runner, port = await serve_proxy(app)
        runners.append(runner)
        return port

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def connect() -> AsyncIterator[Callable[[int], Awaitable[RawClient]]]:
    clients: list[RawClient] = []

    async def open_client(port: int) -> RawClient:
        client = await RawClient.connect(port)
        clients.append(client)
        return client

    yield open_client
    for client in clients:
        await client.close()


# --- 1. empty lines before a request ---------------------------------------------


@BOTH_PATHS
@pytest.mark.parametrize("blank", [b"\r\n", b"\n"], ids=["crlf", "lf"])
async def test_a_few_empty_lines_before_a_request_are_ignored(
    serve: Callable[..., Awaitable[int]],
    connect: Callable[[int], Awaitable[RawClient]],
    upstream: EchoUpstream,
    fast_lane: bool,
    blank: bytes,
) -> None:
    client = await connect(await serve(fast_lane=fast_lane))
    await client.send(request("GET", "/first"))
    assert (await client.read_response()).status == 200
    # What some old clients send after a POST body, and a few more.
    await client.send(blank * 8 + request("GET", "/second"))
    assert (await client.read_response()).status == 200
    assert [r.target for r in upstream.received] == [b"/first", b"/second"]


@pytest.mark.parametrize("blank", [b"\r\n", b"\n"], ids=["crlf", "lf"])
async def test_an_empty_line_flood_is_answered_400_and_closed(
    serve: Callable[..., Awaitable[int]],
    connect: Callable[[int], Awaitable[RawClient]],
    upstream: EchoUpstream,
    blank: bytes,
) -> None:
    # The fast lane kept every empty line and copied its buffer per read: 100 MiB
    # of them took the proxy to 220 MiB and stalled its loop for seconds.
    client = await connect(await serve())
    await client.send(request("GET", "/first"))
    assert (await client.read_response()).status == 200
    flood = blank * (MAX_BLANK_BYTES // len(blank) + 1)
    await client.send(flood[: len(flood) // 2])
    await client.send(flood[len(flood) // 2 :])
    response = await client.read_response()
    assert response.status == 400
    assert response.header("Connection") == "close"
    assert json.loads(response.body)["error"] == "bad request"
    assert await client.rest_until_close() == b""
    assert [r.target for r in upstream.received] == [b"/first"]


async def test_a_flood_past_the_cap_never_reaches_the_upstream_or_other_clients(
    serve: Callable[..., Awaitable[int]],
    connect: Callable[[int], Awaitable[RawClient]],
    upstream: EchoUpstream,
) -> None:
    port = await serve()
    flooder = await connect(port)

    async def flood() -> None:
        for _ in range(64):  # 8 MiB
            await flooder.send(b"\r\n" * 65536)
            await asyncio.sleep(0)

    with pytest.raises(ConnectionError):  # closed by the proxy while we still send
        await flood()
    other = await connect(port)
    await other.send(request("GET", "/other"))
    assert (await other.read_response()).status == 200
    assert [r.target for r in upstream.received] == [b"/other"]


@BOTH_PATHS
async def test_a_head_sent_byte_by_byte_is_relayed(
    serve: Callable[..., Awaitable[int]],
    connect: Callable[[int], Awaitable[RawClient]],
    upstream: EchoUpstream,
    fast_lane: bool,
) -> None:
    # The lane appends the pieces of a head in place (it used to copy the
    # whole buffer per read: quadratic in a slow client's head).
    client = await connect(await serve(fast_lane=fast_lane))
    head = request("GET", "/slow", headers=[("X-Pad", "p" * 2000)])
    for index in range(0, len(head), 7):
        await client.send(head[index : index + 7])
    assert (await client.read_response()).status == 200
    assert upstream.received[0].header("X-Pad") == "p" * 2000


@BOTH_PATHS
@pytest.mark.parametrize("trickle", [b"\r\n", b"GET /never"], ids=["empty-lines", "partial-head"])
async def test_bytes_that_are_not_a_request_do_not_keep_a_connection_open(
    serve: Callable[..., Awaitable[int]],
    connect: Callable[[int], Awaitable[RawClient]],
    fast_lane: bool,
    trickle: bytes,
) -> None:
    # The keep-alive timer counts from the last answer: empty lines or a head
    # that never completes do not restart it.
    port = await serve(fast_lane=fast_lane, server_limits=ServerLimits(keepalive_timeout=0.5))
    client = await connect(port)
    await client.send(request("GET", "/first"))
    assert (await client.read_response()).status == 200

    async def trickle_until_closed() -> None:
        for byte in trickle * 1000:
            await client.send(bytes([byte]))
            await asyncio.sleep(0.05)

    sender = asyncio.ensure_future(trickle_until_closed())
    try:
        # Closed well before the trickle ends (about 0.05 s per byte).
        assert await asyncio.wait_for(client.reader.read(), TIMEOUT) == b""
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)


# --- 3. an Upgrade the proxy will not perform ------------------------------------

H2C_HEADERS = [
    ("Connection", "Upgrade, HTTP2-Settings"),
    ("Upgrade", "h2c"),
    ("HTTP2-Settings", "AAMAAABkAAQAAP__"),
]


@BOTH_PATHS
@pytest.mark.parametrize("upgrade", ["h2c", "tcp", "TLS/1.2"])
async def test_a_declined_upgrade_is_a_plain_request_that_ends_the_connection(
    serve: Callable[..., Awaitable[int]],
    connect: Callable[[int], Awaitable[RawClient]],
    upstream: EchoUpstream,
    fast_lane: bool,
    upgrade: str,
) -> None:
    client = await connect(await serve(fast_lane=fast_lane))
    headers = [("Connection", "Upgrade, HTTP2-Settings"), ("Upgrade", upgrade)]
    await client.send(request("GET", "/h2c", headers=[*headers, ("HTTP2-Settings", "AAMA")]))
    response = await client.read_response()
    assert response.status == 200
    assert response.header("Connection") == "close"
    assert await client.rest_until_close() == b""
    (seen,) = upstream.received
    assert seen.target == b"/h2c"
    assert seen.header("Upgrade") is None
    assert seen.header("HTTP2-Settings") is None


@BOTH_PATHS
async def test_a_request_pipelined_after_a_declined_upgrade_is_never_misread(
    serve: Callable[..., Awaitable[int]],
    connect: Callable[[int], Awaitable[RawClient]],
    upstream: EchoUpstream,
    fast_lane: bool,
) -> None:
    # aiohttp's parser drops what follows an h2c request in the same read: the
    # client got one answer and /next vanished. Now the one answer says
    # `Connection: close` and the connection ends, so the client knows /next
    # was not served (and may send it again), as after any closed connection.
    client = await connect(await serve(fast_lane=fast_lane))
    await client.send(
        request("GET", "/h2c", headers=H2C_HEADERS) + request("GET", "/next"),
    )
    response = await client.read_response()
    assert response.status == 200
    assert response.header("Connection") == "close"
    assert await client.rest_until_close() == b""
    assert [r.target for r in upstream.received] == [b"/h2c"]


@BOTH_PATHS
async def test_a_body_sent_after_a_declined_upgrade_is_never_a_request(
    serve: Callable[..., Awaitable[int]],
    connect: Callable[[int], Awaitable[RawClient]],
    upstream: EchoUpstream,
    fast_lane: bool,
) -> None:
    # The probe's smuggling case: the POST's head went in the h2c request's
    # read (and was dropped), its body 300 ms later was parsed as GET /smuggled.
    client = await connect(await serve(fast_lane=fast_lane))
    smuggled = request("GET", "/smuggled")
    await client.send(
        request("GET", "/h2c", headers=H2C_HEADERS)
        + request("POST", "/public", headers=[("Content-Length", str(len(smuggled)))])
    )
    response = await client.read_response()
    await asyncio.sleep(0.3)
    with contextlib.suppress(ConnectionError):
        await client.send(smuggled)
    assert response.status == 200
    assert await client.rest_until_close() == b""
    assert [r.target for r in upstream.received] == [b"/h2c"]


@BOTH_PATHS
async def test_requests_after_a_websocket_upgrade_that_failed_are_still_served(
    serve: Callable[..., Awaitable[int]],
    connect: Callable[[int], Awaitable[RawClient]],
    upstream: EchoUpstream,
    fast_lane: bool,
) -> None:
    # WebSocket is the one upgrade the proxy performs: the guard leaves it to
    # aiohttp. The echo upstream answers the handshake 200 (a refusal), which
    # is relayed; the connection stays usable.
    client = await connect(await serve(fast_lane=fast_lane))
    ws = [
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
    ]
    await client.send(request("GET", "/ws", headers=ws))
    response = await client.read_response()
    assert response.status == 200
    await client.send(request("GET", "/after"))
    assert (await client.read_response()).status == 200
    assert [r.target for r in upstream.received] == [b"/ws", b"/after"]
