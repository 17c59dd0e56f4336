"""The copies' client (`proxy.shadow.candidate.CandidateClients`) against real servers on loopback.

A TCP side goes through the thin keep-alive pool: answers with a length,
chunked, HEAD, headers in order with their repeats, the body cap (truncated,
connection closed, the next copy on a new one), failures the runtime catches
(reset, refused, a broken head, a cancelled copy that closes its connection),
keep-alive reuse and the connection limit, the head as sent. A Unix-socket
side (the in-process app) still goes through aiohttp's client.
"""

from __future__ import annotations

import asyncio
import socket
from typing import TYPE_CHECKING

import aiohttp
import pytest
from aiohttp import web

from proxy.shadow.candidate import CandidateClients, request_head

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from pathlib import Path

    from proxy.shadow.model import Answer

# What the shadow runtime catches from a fetch (proxy.shadow.copies.CopyWorker._ask).
SIDE_FAILURES = (aiohttp.ClientError, OSError, TimeoutError)
TIMEOUT = 5.0
JSON = (
    b'{"events":['
    + b",".join(b'{"id":%d,"title":"Session %d"}' % (n, n) for n in range(60))
    + b"]}"
)


class RawSide:
    """A TCP server whose every connection runs `script`: exact bytes, resets, stalls.

    `connections` counts accepted connections, `heads` the request heads read
    with `read_head`, and `closed` is set each time a client closed a
    connection it had open (the server read EOF or a reset).
    """

    def __init__(
        self,
        script: Callable[[RawSide, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    ) -> None:
        self.script = script
        self.server: asyncio.Server | None = None
        self.connections = 0
        self.heads: list[bytes] = []
        self.closed = asyncio.Event()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.script(self, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def read_head(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        self.heads.append(head)
        return head

    async def wait_closed_by_client(self, reader: asyncio.StreamReader) -> None:
        try:
            while await reader.read(65536):
                pass
        except ConnectionError:
            pass
        self.closed.set()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def raw_sides() -> AsyncIterator[list[RawSide]]:
    made: list[RawSide] = []
    yield made
    for side in made:
        await side.close()


async def raw_side(
    made: list[RawSide],
    script: Callable[[RawSide, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> tuple[RawSide, str]:
    side = RawSide(script)
    made.append(side)
    return side, await side.start()


class AppSide:
    """An aiohttp server; `peers` is the client port of every request, in order."""

    def __init__(self) -> None:
        self.peers: list[int] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self, *, unix: str | None = None) -> AppSide:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self.runner.setup()
        if unix is None:
            site: web.BaseSite = web.TCPSite(self.runner, "127.0.0.1", 0)
            await site.start()
            self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        else:
            site = web.UnixSite(self.runner, unix)
            await site.start()
            self.url = "http://new.shadow"
        return self

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.peers.append(peer[1] if isinstance(peer, tuple) else 0)
        if request.path == "/chunked":
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            response.enable_chunked_encoding()
            await response.prepare(request)
            for start in range(0, len(JSON), 500):
                await response.write(JSON[start : start + 500])
                await asyncio.sleep(0)
            await response.write_eof()
            return response
        if request.path == "/big":
            return web.Response(body=b"x" * 200_000, content_type="application/octet-stream")
        return web.Response(body=JSON, content_type="application/json")


@pytest.fixture
async def app_side() -> AsyncIterator[AppSide]:
    side = await AppSide().start()
    yield side
    await side.close()


@pytest.fixture
async def clients() -> AsyncIterator[CandidateClients]:
    made = CandidateClients(limit=4)
    yield made
    await made.close()


async def fetch(
    clients: CandidateClients,
    url: str,
    target: str = "/api/events",
    *,
    method: str = "GET",
    headers: tuple[tuple[str, str], ...] = (("Host", "club.example"),),
    max_body: int = 1 << 20,
    unix: str | None = None,
) -> Answer:
    async with asyncio.timeout(TIMEOUT):
        return await clients.fetch((url, unix), method, target, headers, max_body=max_body)


async def test_an_answer_with_a_length(clients: CandidateClients, app_side: AppSide) -> None:
    answer = await clients.fetch(
        (app_side.url, None), "GET", "/api/events?page=1", (("Host", "x"),), max_body=1 << 20
    )
    assert answer.status == 200
    assert answer.body == JSON
    assert not answer.truncated
    assert answer.latency > 0
    headers = dict(answer.headers)
    assert headers["Content-Length"] == str(len(JSON))
    assert headers["Content-Type"] == "application/json"


async def test_a_chunked_answer(clients: CandidateClients, app_side: AppSide) -> None:
    answer = await clients.fetch((app_side.url, None), "GET", "/chunked", (), max_body=1 << 20)
    assert answer.status == 200
    assert answer.body == JSON
    assert ("Transfer-Encoding", "chunked") in answer.headers
    # Read to its last chunk: the connection is reused for the next copy.
    again = await clients.fetch((app_side.url, None), "GET", "/chunked", (), max_body=1 << 20)
    assert again.body == JSON
    assert len(set(app_side.peers)) == 1


async def test_head_has_no_body_and_keeps_the_connection(
    clients: CandidateClients, app_side: AppSide
) -> None:
    answer = await clients.fetch((app_side.url, None), "HEAD", "/api/events", (), max_body=1 << 20)
    assert answer.status == 200
    assert answer.body == b""
    assert not answer.truncated
    assert dict(answer.headers)["Content-Length"] == str(len(JSON))
    answer = await clients.fetch((app_side.url, None), "GET", "/api/events", (), max_body=1 << 20)
    assert answer.body == JSON
    assert len(app_side.peers) == 2
    assert len(set(app_side.peers)) == 1


async def test_headers_keep_their_order_and_repeats(
    clients: CandidateClients, raw_sides: list[RawSide]
) -> None:
    answer_head = (
        b"HTTP/1.1 201 Created\r\n"
        b"Set-Cookie: a=1; Path=/\r\n"
        b"Content-Type: application/json\r\n"
        b"Set-Cookie: b=2\r\n"
        b"X-Trace: one\r\n"
        b"Set-Cookie: c=3; HttpOnly\r\n"
        b"x-trace: two\r\n"
        b"Content-Length: 2\r\n"
        b"\r\n{}"
    )

    async def script(
        side: RawSide, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await side.read_head(reader)
        writer.write(answer_head)
        await side.wait_closed_by_client(reader)

    _, url = await raw_side(raw_sides, script)
    answer = await clients.fetch((url, None), "GET", "/", (), max_body=100)
    assert answer.status == 201
    assert answer.body == b"{}"
    assert answer.headers == (
        ("Set-Cookie", "a=1; Path=/"),
        ("Content-Type", "application/json"),
        ("Set-Cookie", "b=2"),
        ("X-Trace", "one"),
        ("Set-Cookie", "c=3; HttpOnly"),
        ("x-trace", "two"),
        ("Content-Length", "2"),
    )


async def test_the_head_as_sent(clients: CandidateClients, raw_sides: list[RawSide]) -> None:
    async def script(
        side: RawSide, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while True:
            await side.read_head(reader)
            writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")

    side, url = await raw_side(raw_sides, script)
    headers = (
        ("Host", "club.example"),
        ("Accept", "application/json"),
        ("X-Split", "a\r\nInjected: 1"),  # would split the head: left out
        ("X-Bad\nName", "v"),
        ("Cookie", "a=1"),
        ("Cookie", "b=2"),
        ("X-Club-Shadow", "1"),
    )
    answer = await clients.fetch((url, None), "GET", "/a%20b?q=1&r", headers, max_body=10)
    assert answer.status == 204
    assert side.heads[0] == (
        b"GET /a%20b?q=1&r HTTP/1.1\r\n"
        b"Host: club.example\r\n"
        b"Accept: application/json\r\n"
        b"Cookie: a=1\r\n"
        b"Cookie: b=2\r\n"
        b"X-Club-Shadow: 1\r\n"
        b"\r\n"
    )
    # No Host given (an HTTP/1.0 client's copy): the side's own, as aiohttp's client sent it.
    await clients.fetch((url, None), "OPTIONS", "/x", {"X-One": "1"}, max_body=10)
    assert (
        side.heads[1]
        == b"OPTIONS /x HTTP/1.1\r\nX-One: 1\r\n" + f"Host: {url[7:]}\r\n\r\n".encode()
    )
    assert side.connections == 1


def test_request_head_refuses_a_broken_request_line() -> None:
    with pytest.raises(aiohttp.InvalidURL):
        request_head("GET", "/a b", (), default_host="h")
    with pytest.raises(aiohttp.InvalidURL):
        request_head("GET", "/a\r\nX: 1", (), default_host="h")
    with pytest.raises(aiohttp.InvalidURL):
        request_head("GE T", "/", (), default_host="h")
    # Bytes the server decoded with surrogateescape go out as they came.
    head = request_head(
        "GET", "/", (("X-Raw", b"caf\xe9".decode("utf-8", "surrogateescape")),), default_host="h"
    )
    assert b"X-Raw: caf\xe9\r\n" in head


async def test_a_body_over_the_cap_is_truncated_and_the_next_copy_works(
    clients: CandidateClients, app_side: AppSide
) -> None:
    answer = await clients.fetch((app_side.url, None), "GET", "/big", (), max_body=1000)
    assert answer.status == 200
    assert answer.truncated
    assert answer.body == b""
    answer = await clients.fetch((app_side.url, None), "GET", "/api/events", (), max_body=1 << 20)
    assert answer.body == JSON
    assert not answer.truncated
    # The truncated answer's connection was closed, not pooled half-read.
    assert len(app_side.peers) == 2
    assert len(set(app_side.peers)) == 2
    # A body of exactly the cap is whole.
    answer = await clients.fetch((app_side.url, None), "GET", "/api/events", (), max_body=len(JSON))
    assert answer.body == JSON
    assert not answer.truncated


async def test_a_reset_connection_raises_what_the_runtime_catches(
    clients: CandidateClients, raw_sides: list[RawSide]
) -> None:
    async def script(
        side: RawSide, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await side.read_head(reader)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        writer.transport.abort()  # RST

    side, url = await raw_side(raw_sides, script)
    with pytest.raises((aiohttp.ClientError, OSError)):
        await fetch(clients, url)
    # A fresh connection that failed is not sent again.
    assert side.connections == 1


async def test_a_reset_mid_body_raises(clients: CandidateClients, raw_sides: list[RawSide]) -> None:
    async def script(
        side: RawSide, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await side.read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.transport.abort()

    _, url = await raw_side(raw_sides, script)
    with pytest.raises(aiohttp.ClientError):
        await fetch(clients, url)


async def test_a_broken_answer_raises_a_client_error(
    clients: CandidateClients, raw_sides: list[RawSide]
) -> None:
    async def head(
        side: RawSide, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await side.read_head(reader)
        writer.write(b"HTTP/1.1 abc Nope\r\n\r\n")
        await side.wait_closed_by_client(reader)

    async def body(
        side: RawSide, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await side.read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n")
        await side.wait_closed_by_client(reader)

    for script in (head, body):
        _, url = await raw_side(raw_sides, script)
        with pytest.raises(aiohttp.ClientError):
            await fetch(clients, url)


async def test_keep_alive_reuses_one_connection(
    clients: CandidateClients, app_side: AppSide
) -> None:
    for _ in range(3):
        answer = await clients.fetch(
            (app_side.url, None), "GET", "/api/events", (), max_body=1 << 20
        )
        assert answer.body == JSON
    assert len(app_side.peers) == 3
    assert len(set(app_side.peers)) == 1


async def test_a_side_that_closed_an_idle_connection_gets_a_new_one(
    clients: CandidateClients, raw_sides: list[RawSide]
) -> None:
    async def script(
        side: RawSide, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await side.read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        # Closes right after answering, without saying so (its keep-alive ran out).

    side, url = await raw_side(raw_sides, script)
    for _ in range(2):
        answer = await clients.fetch((url, None), "GET", "/", (), max_body=10)
        assert answer.body == b"ok"
        await asyncio.sleep(0.05)
    assert side.connections == 2


async def test_at_most_limit_connections(raw_sides: list[RawSide]) -> None:
    open_now = 0
    most = 0

    async def script(
        side: RawSide, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        nonlocal open_now, most
        open_now += 1
        most = max(most, open_now)
        try:
            while True:
                await side.read_head(reader)
                await asyncio.sleep(0.05)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        finally:
            open_now -= 1

    side, url = await raw_side(raw_sides, script)
    clients = CandidateClients(limit=2)
    try:
        async with asyncio.timeout(TIMEOUT):
            answers = await asyncio.gather(
                *(clients.fetch((url, None), "GET", "/", (), max_body=10) for _ in range(6))
            )
    finally:
        await clients.close()
    assert [a.body for a in answers] == [b"ok"] * 6
    assert side.connections == 2
    assert most == 2


async def test_a_closed_port_raises_a_connection_error(clients: CandidateClients) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(aiohttp.ClientConnectionError) as caught:
        await fetch(clients, f"http://127.0.0.1:{port}")
    assert isinstance(caught.value, SIDE_FAILURES)


async def test_a_cancelled_copy_closes_its_connection(
    clients: CandidateClients, raw_sides: list[RawSide]
) -> None:
    async def script(
        side: RawSide, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await side.read_head(reader)
        if side.connections == 1:
            # Half an answer, then nothing: the route's timeout cancels the copy.
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
            await side.wait_closed_by_client(reader)
            return
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await side.wait_closed_by_client(reader)

    side, url = await raw_side(raw_sides, script)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await clients.fetch((url, None), "GET", "/", (), max_body=1000)
    async with asyncio.timeout(TIMEOUT):
        await side.closed.wait()
    answer = await fetch(clients, url, max_body=10)
    assert answer.body == b"ok"
    assert side.connections == 2


async def test_a_copy_waiting_for_a_head_is_cancelled_cleanly(
    clients: CandidateClients, raw_sides: list[RawSide]
) -> None:
    async def script(
        side: RawSide, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await side.read_head(reader)
        await side.wait_closed_by_client(reader)  # never answers

    side, url = await raw_side(raw_sides, script)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await clients.fetch((url, None), "GET", "/", (), max_body=1000)
    async with asyncio.timeout(TIMEOUT):
        await side.closed.wait()


async def test_close_closes_the_pooled_connections(raw_sides: list[RawSide]) -> None:
    async def script(
        side: RawSide, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await side.read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await side.wait_closed_by_client(reader)

    side, url = await raw_side(raw_sides, script)
    clients = CandidateClients(limit=4)
    answer = await clients.fetch((url, None), "GET", "/", (), max_body=10)
    assert answer.body == b"ok"
    assert not side.closed.is_set()
    await clients.close()
    async with asyncio.timeout(TIMEOUT):
        await side.closed.wait()


async def test_a_unix_socket_side_goes_through_aiohttp(tmp_path: Path) -> None:
    path = str(tmp_path / "new.sock")
    side = await AppSide().start(unix=path)
    clients = CandidateClients(limit=4)
    try:
        answer = await fetch(clients, side.url, "/chunked", unix=path)
        assert answer.body == JSON
        answer = await fetch(clients, side.url, "/big", unix=path, max_body=1000)
        assert answer.truncated
    finally:
        await clients.close()
        await side.close()
