"""Bodies and failures through the proxy (pitfalls checklist §1: 11, 18-19, 21-22).

Bodies must arrive byte-identical both ways (compressed ones included), stream
without waiting for the whole message, and a failure must be an answer (502,
504 with a JSON body) or, once the answer has started, a visibly cut
connection: never a silently truncated success.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest

from tests.proxy import forward_support
from tests.proxy.echo_upstream import GZIP_BODY, EchoUpstream, pattern
from tests.proxy.forward_support import TIMEOUT, RawClient, proxy_app, request

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from pytest_aiohttp import AiohttpServer

MiB = 1024 * 1024

# The shared fixtures of the forwarding tests.
proxy_port = forward_support.proxy_port
raw = forward_support.raw
upstream = forward_support.upstream


@pytest.fixture
async def client(proxy_port: int) -> AsyncIterator[aiohttp.ClientSession]:
    # A client that does not decompress either, to compare the exact bytes.
    async with aiohttp.ClientSession(
        f"http://127.0.0.1:{proxy_port}", auto_decompress=False
    ) as session:
        yield session


async def test_gzip_response_passes_byte_identical(client: aiohttp.ClientSession) -> None:
    async with client.get("/gzip", headers={"Accept-Encoding": "gzip"}) as response:
        body = await response.read()
        assert response.headers["Content-Encoding"] == "gzip"
        assert response.headers["Content-Length"] == str(len(GZIP_BODY))
    assert body == GZIP_BODY


async def test_gzip_request_body_passes_byte_identical(
    client: aiohttp.ClientSession, upstream: EchoUpstream
) -> None:
    compressed = gzip.compress(pattern(300_000), mtime=0)
    headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    async with client.post("/echo", data=compressed, headers=headers) as response:
        echoed = json.loads(await response.read())
    assert echoed["body_sha256"] == hashlib.sha256(compressed).hexdigest()
    seen = upstream.received[-1]
    assert seen.header("Content-Encoding") == "gzip"
    assert seen.header("Content-Length") == str(len(compressed))


async def _chunks(data: bytes, size: int = 256 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_large_upload_streams_intact(
    client: aiohttp.ClientSession, upstream: EchoUpstream, framing: str
) -> None:
    body = pattern(20 * MiB)
    data: Any = io.BytesIO(body) if framing == "content-length" else _chunks(body)
    async with client.put("/echo", data=data, skip_auto_headers=["Content-Type"]) as response:
        echoed = json.loads(await response.read())
    assert echoed["body_len"] == len(body)
    assert echoed["body_sha256"] == hashlib.sha256(body).hexdigest()
    seen = upstream.received[-1]
    assert seen.chunked is (framing == "chunked")
    # aiohttp's client would add application/octet-stream; the proxy must not.
    assert seen.header("Content-Type") is None


@pytest.mark.parametrize("path", ["/big", "/chunked"])
async def test_large_download_streams_intact(client: aiohttp.ClientSession, path: str) -> None:
    size = 20 * MiB + 7
    digest = hashlib.sha256()
    async with client.get(f"{path}?size={size}") as response:
        async for chunk in response.content.iter_chunked(1 << 16):
            digest.update(chunk)
    assert digest.hexdigest() == hashlib.sha256(pattern(size)).hexdigest()


async def test_response_streams_before_the_upstream_finishes(
    raw: RawClient, upstream: EchoUpstream
) -> None:
    await raw.send(request("GET", "/hold"))
    status, _, headers = await raw.read_head()
    assert status == 200
    assert ("Transfer-Encoding", "chunked") in headers
    # The first chunk arrives while the upstream is still holding the rest.
    first = await asyncio.wait_for(raw.reader.readuntil(b"first\r\n"), TIMEOUT)
    assert first.endswith(b"first\r\n")
    upstream.release.set()
    rest = await asyncio.wait_for(raw.reader.readuntil(b"0\r\n\r\n"), TIMEOUT)
    assert b"last" in rest


async def test_client_abort_mid_download_closes_the_upstream_connection(
    raw: RawClient, upstream: EchoUpstream
) -> None:
    await raw.send(request("GET", f"/big?size={200 * MiB}"))
    await raw.read_head()
    await asyncio.wait_for(raw.reader.readexactly(1024), TIMEOUT)
    raw.writer.transport.abort()
    await asyncio.wait_for(upstream.peer_gone.wait(), TIMEOUT)


@pytest.mark.parametrize("path", ["/die?size=100000", "/die-chunked?size=100000"])
async def test_upstream_death_mid_body_cuts_the_client_connection(
    raw: RawClient, path: str
) -> None:
    await raw.send(request("GET", path))
    response = await raw.read_response()
    assert response.status == 200
    # Short of Content-Length, or without the last chunk: visibly incomplete.
    assert not response.complete
    assert len(response.body) <= 100000


async def test_upstream_death_mid_body_is_an_error_for_an_http_client(
    client: aiohttp.ClientSession,
) -> None:
    async with client.get("/die?size=100000") as response:
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()


async def test_refused_upstream_is_a_502_with_json_and_request_id(
    aiohttp_server: AiohttpServer, unused_tcp_port_factory: Any, tmp_path: Path
) -> None:
    url = f"http://127.0.0.1:{unused_tcp_port_factory()}"
    server = await aiohttp_server(proxy_app(tmp_path, url))
    async with (
        aiohttp.ClientSession() as session,
        session.get(server.make_url("/x"), headers={"X-Request-ID": "rid-1"}) as response,
    ):
        assert response.status == 502
        assert response.headers["X-Request-ID"] == "rid-1"
        assert await response.json() == {"error": "upstream unreachable", "request_id": "rid-1"}


async def test_slow_upstream_is_a_504(
    upstream: EchoUpstream, aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    server = await aiohttp_server(proxy_app(tmp_path, upstream.url, read_timeout="300ms"))
    async with (
        aiohttp.ClientSession() as session,
        session.get(server.make_url("/slow?delay=5")) as response,
    ):
        assert response.status == 504
        body = await response.json()
        assert body["error"] == "upstream timed out"
        assert body["request_id"] == response.headers["X-Request-ID"]


async def test_post_is_never_retried_when_the_upstream_drops_it(
    client: aiohttp.ClientSession, upstream: EchoUpstream
) -> None:
    # Warm the pool so the POST goes out on a reused connection: aiohttp's
    # client retries only there, and only idempotent methods.
    async with client.get("/echo") as response:
        assert response.status == 200
    async with client.post("/drop", data=b"payload") as response:
        assert response.status == 502
    posts = [r for r in upstream.received if r.method == "POST"]
    assert len(posts) == 1
