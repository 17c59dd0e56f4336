"""The thin upstream client (proxy.upstream.client) and the raw request head.

Keep-alive reuse, idle expiry, the pool limit, the one stale-connection retry
(idempotent, bodiless, reused connection, nothing received), early answers
while the request body is still going up, close-delimited answers, timeouts
mid-body; and `upstream_request_head` applying exactly the rules of
`upstream_request_headers` to raw bytes.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.core.headers import ForwardingPolicy, upstream_request_head, upstream_request_headers
from proxy.serving.app import PROXY
from tests.proxy import forward_support
from tests.proxy.forward_support import TIMEOUT, RawClient, proxy_app, request

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from pathlib import Path

    from pytest_aiohttp import AiohttpServer

    from proxy.upstream.client import ConnectionPool
    from tests.proxy.echo_upstream import EchoUpstream

# The shared fixtures of the forwarding tests.
proxy_port = forward_support.proxy_port
raw = forward_support.raw
upstream = forward_support.upstream


class ScriptedUpstream:
    """An upstream whose every connection runs `script`, for answers EchoUpstream cannot give."""

    def __init__(
        self, script: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
    ) -> None:
        self.script = script
        self.server: asyncio.Server | None = None
        self.heads: list[bytes] = []
        self.connections = 0

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.script(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def read_head(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        self.heads.append(head)
        return head

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def scripted() -> AsyncIterator[list[ScriptedUpstream]]:
    made: list[ScriptedUpstream] = []
    yield made
    for server in made:
        await server.close()


async def _proxy_to(
    server: ScriptedUpstream,
    made: list[ScriptedUpstream],
    aiohttp_server: AiohttpServer,
    tmp_path: Path,
    **opts: str,
) -> RawClient:
    made.append(server)
    url = await server.start()
    proxy = await aiohttp_server(proxy_app(tmp_path, url, **opts))
    assert proxy.port is not None
    return await RawClient.connect(proxy.port)


# --- the request head as bytes ---------------------------------------------------

HEADER_CASES = [
    # plain client headers, order and case kept
    [("Host", "a.test"), ("User-Agent", "x"), ("accept", "*/*"), ("X-Dup", "1"), ("X-Dup", "2")],
    # hop-by-hop and Connection tokens, Via extended
    [
        ("Host", "a.test"),
        ("Connection", "keep-alive, X-Foo, Via"),
        ("X-Foo", "1"),
        ("Via", "1.0 lb"),
        ("TE", "trailers"),
        ("Expect", "100-continue"),
        ("X-Request-ID", "client"),
    ],
    # forwarding headers (kept only from a trusted peer), one named in Connection
    [
        ("X-Forwarded-For", "1.2.3.4"),
        ("Host", "b.test:8443"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "front.test"),
        ("Forwarded", "for=1.2.3.4"),
        ("Via", "1.1 lb1"),
        ("Via", "1.1 lb2"),
    ],
    [
        ("Host", "c.test"),
        ("X-Forwarded-For", "1.2.3.4"),
        ("X-Forwarded-For", "5.6.7.8"),
        ("Connection", "x-forwarded-proto"),
        ("X-Forwarded-Proto", "https"),
        ("Content-Length", "3"),
    ],
    # Connection cannot remove Host or Content-Length
    [("Host", "d.test"), ("Connection", "Host, Content-Length"), ("Content-Length", "5")],
]


@pytest.mark.parametrize("headers", HEADER_CASES)
@pytest.mark.parametrize("peer", ["10.0.0.5", "192.0.2.7"])
def test_raw_head_applies_the_same_rules_as_the_multidict_headers(
    headers: list[tuple[str, str]], peer: str
) -> None:
    policy = ForwardingPolicy.from_cidrs(["10.0.0.0/8"])
    expected = upstream_request_headers(
        CIMultiDictProxy(CIMultiDict(headers)),
        policy=policy,
        peer=peer,
        scheme="http",
        request_id="rid-1",
    )
    head, chunked = upstream_request_head(
        "GET",
        "/x?y=1",
        tuple((k.encode(), v.encode()) for k, v in headers),
        policy=policy,
        peer=peer,
        scheme="http",
        request_id="rid-1",
        default_host="upstream:80",
        body=False,
    )
    assert not chunked
    lines = head.decode().split("\r\n")
    assert lines[0] == "GET /x?y=1 HTTP/1.1"
    assert lines[-2:] == ["", ""]
    got = [tuple(line.split(": ", 1)) for line in lines[1:-2]]
    # Host first (RFC 9112 §3.2), then everything else in the multidict's order.
    want = [("Host", expected["Host"])] + [(k, v) for k, v in expected.items() if k != "Host"]
    assert [(k.lower(), v) for k, v in got] == [(k.lower(), v) for k, v in want]


@pytest.mark.parametrize(
    ("method", "headers", "body", "framing"),
    [
        ("POST", [("Content-Length", "3")], True, ["Content-Length: 3"]),
        ("POST", [], True, ["Transfer-Encoding: chunked"]),
        ("POST", [], False, ["Content-Length: 0"]),  # as aiohttp's client did
        ("PROPFIND", [], False, ["Content-Length: 0"]),
        ("GET", [], False, []),
        ("DELETE", [("Content-Length", "0")], False, ["Content-Length: 0"]),
    ],
)
def test_raw_head_framing(
    method: str, headers: list[tuple[str, str]], body: bool, framing: list[str]
) -> None:
    head, chunked = upstream_request_head(
        method,
        "/",
        tuple((k.encode(), v.encode()) for k, v in [("Host", "h"), *headers]),
        policy=ForwardingPolicy(),
        peer="127.0.0.1",
        scheme="http",
        request_id="r",
        default_host="u:1",
        body=body,
    )
    lines = head.decode().split("\r\n")
    assert [x for x in lines if x.startswith(("Content-Length", "Transfer-Encoding"))] == framing
    assert chunked is (framing == ["Transfer-Encoding: chunked"])


def test_raw_head_keeps_non_ascii_bytes_and_uses_the_upstream_host_when_none_was_sent() -> None:
    head, _ = upstream_request_head(
        "GET",
        "/caf\udce9",  # how aiohttp's parser hands over a raw 0xE9 byte
        ((b"X-Latin", b"caf\xe9"),),
        policy=ForwardingPolicy(),
        peer=None,
        scheme="http",
        request_id="r",
        default_host="legacy.internal:8080",
        body=False,
    )
    assert head.startswith(b"GET /caf\xe9 HTTP/1.1\r\nHost: legacy.internal:8080\r\n")
    assert b"X-Latin: caf\xe9\r\n" in head
    assert b"X-Forwarded-For" not in head
    assert b"X-Forwarded-Host" not in head


# --- the pool through the proxy -------------------------------------------------


async def test_non_ascii_header_bytes_reach_the_upstream_unchanged(
    raw: RawClient, upstream: EchoUpstream
) -> None:
    await raw.send(b"GET /echo HTTP/1.1\r\nHost: proxy.test\r\nX-Latin: caf\xe9 cr\xe8me\r\n\r\n")
    assert (await raw.read_response()).status == 200
    assert upstream.received[-1].header("X-Latin") == "caf\xe9 cr\xe8me"


async def test_http10_request_without_host_gets_the_upstream_host(
    raw: RawClient, upstream: EchoUpstream
) -> None:
    await raw.send(b"GET /echo HTTP/1.0\r\n\r\n")
    response = await raw.read_response()
    assert response.status == 200
    assert upstream.received[-1].all("Host") == [f"127.0.0.1:{upstream.port}"]


async def test_stale_keepalive_connection_is_retried_once_for_an_idempotent_request(
    raw: RawClient, upstream: EchoUpstream
) -> None:
    # Fresh connection: /drop closes without answering, nothing is retried.
    await raw.send(request("GET", "/drop"))
    assert (await raw.read_response()).status == 502
    assert [r.target for r in upstream.received] == [b"/drop"]
    # Reused connection that closes before answering: one retry, on a new connection.
    await raw.send(request("GET", "/echo"))
    assert (await raw.read_response()).status == 200
    await raw.send(request("GET", "/drop"))
    assert (await raw.read_response()).status == 502
    assert [r.target for r in upstream.received] == [b"/drop", b"/echo", b"/drop", b"/drop"]


async def test_a_request_with_a_body_is_never_retried(
    raw: RawClient, upstream: EchoUpstream
) -> None:
    await raw.send(request("GET", "/echo"))
    assert (await raw.read_response()).status == 200
    await raw.send(request("PUT", "/drop", body=b"data"))
    assert (await raw.read_response()).status == 502
    assert [r.target for r in upstream.received] == [b"/echo", b"/drop"]


async def test_upstream_closing_an_idle_connection_is_noticed(
    raw: RawClient, upstream: EchoUpstream
) -> None:
    await raw.send(request("GET", "/keepalive-close"))
    assert (await raw.read_response()).status == 200
    await asyncio.wait_for(_until(lambda: upstream.closed == 1), TIMEOUT)
    await raw.send(request("POST", "/echo", body=b"x"))
    assert (await raw.read_response()).status == 200
    assert upstream.accepted == 2


async def test_idle_connections_close_after_keepalive_timeout(
    upstream: EchoUpstream, aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    # 600 ms: the pooled connection must still be there when the test looks,
    # even if the test process (which also runs the upstream) stalls a little.
    app = proxy_app(tmp_path, upstream.url, keepalive_timeout="600ms")
    server = await aiohttp_server(app)
    assert server.port is not None
    client = await RawClient.connect(server.port)
    try:
        await client.send(request("GET", "/echo"))
        assert (await client.read_response()).status == 200
        pool = app[PROXY].pools.current["legacy"].client
        assert pool.open_connections == 1
        await asyncio.wait_for(_until(lambda: upstream.closed == 1), TIMEOUT)
        assert pool.open_connections == 0
        await client.send(request("GET", "/echo"))
        assert (await client.read_response()).status == 200
        assert upstream.accepted == 2
    finally:
        await client.close()


async def test_waiting_for_a_pooled_connection_counts_against_connect_timeout(
    upstream: EchoUpstream, aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    app = proxy_app(tmp_path, upstream.url, max_connections="1", connect_timeout="300ms")
    server = await aiohttp_server(app)
    assert server.port is not None
    holder, waiter = await RawClient.connect(server.port), await RawClient.connect(server.port)
    try:
        await holder.send(request("GET", "/hold"))
        await holder.read_head()
        await waiter.send(request("GET", "/echo"))
        response = await waiter.read_response()
        assert response.status == 504
        assert json.loads(response.body)["error"] == "upstream timed out"
        upstream.release.set()
        await asyncio.wait_for(holder.reader.readuntil(b"0\r\n\r\n"), TIMEOUT)
        # The slot is free again.
        await waiter.send(request("GET", "/echo"))
        assert (await waiter.read_response()).status == 200
    finally:
        await holder.close()
        await waiter.close()


async def test_read_timeout_mid_body_cuts_the_client_connection(
    upstream: EchoUpstream, aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    server = await aiohttp_server(proxy_app(tmp_path, upstream.url, read_timeout="300ms"))
    assert server.port is not None
    client = await RawClient.connect(server.port)
    try:
        await client.send(request("GET", "/hold"))
        response = await client.read_response()
        assert response.status == 200
        assert not response.complete
        assert response.body.startswith(b"5\r\nfirst") or b"first" in response.body
    finally:
        await client.close()


async def test_early_answer_while_the_body_is_uploading_is_relayed(
    scripted: list[ScriptedUpstream], aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_head(reader)
        writer.write(b"HTTP/1.1 413 Too Big\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbig!")
        await writer.drain()

    server = ScriptedUpstream(refuse)
    client = await _proxy_to(server, scripted, aiohttp_server, tmp_path)
    try:
        size = 20 * 1024 * 1024
        await client.send(request("PUT", "/up", headers=[("Content-Length", str(size))]))
        await client.send(b"x" * 65536)
        response = await client.read_response()
        assert response.status == 413
        assert response.body == b"big!"
    finally:
        await client.close()


@pytest.mark.parametrize("version", [b"HTTP/1.1", b"HTTP/1.0"])
async def test_close_delimited_answer_is_relayed_whole_and_not_pooled(
    scripted: list[ScriptedUpstream], aiohttp_server: AiohttpServer, tmp_path: Path, version: bytes
) -> None:
    body = bytes(range(256)) * 1000

    async def until_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_head(reader)
        writer.write(version + b" 200 OK\r\nConnection: close\r\n\r\n" + body)
        await writer.drain()

    server = ScriptedUpstream(until_close)
    client = await _proxy_to(server, scripted, aiohttp_server, tmp_path)
    try:
        for _ in range(2):
            await client.send(request("GET", "/eof"))
            response = await client.read_response()
            assert response.status == 200
            assert response.complete
            assert response.body == body
        # One upstream connection per request: none was reused after the close.
        assert server.connections == 2
    finally:
        await client.close()


async def test_switching_protocols_on_a_plain_request_is_a_502(
    scripted: list[ScriptedUpstream], aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    async def switch(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_head(reader)
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"
        )
        await writer.drain()
        await reader.read()

    server = ScriptedUpstream(switch)
    client = await _proxy_to(server, scripted, aiohttp_server, tmp_path)
    try:
        await client.send(request("GET", "/x"))
        assert (await client.read_response()).status == 502
    finally:
        await client.close()


async def test_bytes_from_an_idle_upstream_connection_keep_it_out_of_the_pool(
    scripted: list[ScriptedUpstream], aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    def pool() -> ConnectionPool:
        return app[PROXY].pools.current["legacy"].client

    def idle_saw_bytes() -> bool:
        idle = pool()._idle  # what the proxy knows of its idle connection
        return bool(idle) and all(proto.answered for proto, _ in idle)

    async def extra(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await server.read_head(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
            # Unasked-for bytes once the connection is back in the pool: a broken stream.
            await asyncio.wait_for(_until(lambda: pool().idle_connections == 1), TIMEOUT)
            writer.write(b"HTTP/1.1 200 OK\r\n")
            await writer.drain()
            garbage_sent.set()

    garbage_sent = asyncio.Event()
    server = ScriptedUpstream(extra)
    scripted.append(server)
    app = proxy_app(tmp_path, await server.start())
    proxy = await aiohttp_server(app)
    assert proxy.port is not None
    client = await RawClient.connect(proxy.port)
    try:
        for _ in range(2):
            await client.send(request("GET", "/x"))
            response = await client.read_response()
            assert (response.status, response.body) == (200, b"ok")
            await asyncio.wait_for(garbage_sent.wait(), TIMEOUT)
            garbage_sent.clear()
            # The next request must find the pooled connection already marked.
            await asyncio.wait_for(_until(idle_saw_bytes), TIMEOUT)
        assert server.connections == 2
    finally:
        await client.close()


async def _until(predicate: Callable[[], bool]) -> None:
    while not predicate():
        await asyncio.sleep(0.02)
