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
client_of = forward_support.client_of

BOTH_PATHS = pytest.mark.parametrize("fast_lane", [True, False], ids=["fast-lane", "aiohttp-path"])


@pytest.fixture
async def serve(
    tmp_path: Path, upstream: EchoUpstream
) -> AsyncIterator[Callable[..., Awaitable[int]]]:
    """Serve a proxy to `upstream` as `club-proxy run` does; returns its port."""
    runners = []

    async def start(
        *, fast_lane: bool = True, opts: dict[str, str] | None = None, **kwargs: Any
    ) -> int:
        """`opts`: upstream keys of routes.yaml (`{"max_connections": "1"}`)."""
        app = create_app(
            routes_path=legacy_routes(tmp_path, upstream.url, **(opts or {})),
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
def connect(
    client_of: Callable[[int], Awaitable[RawClient]],
) -> Callable[[int], Awaitable[RawClient]]:
    """Raw client connections to a port, closed after the test."""
    return client_of


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


# --- 2. slow request bodies and slow readers -------------------------------------

# A small pool, so a handful of slow clients would take all of it, and a
# connect timeout (which includes the wait for a pooled connection) long
# enough for a freed connection to be taken.
SMALL_POOL = {"max_connections": "2", "connect_timeout": "5s"}


async def _get_ok(port: int, connect: Callable[[int], Awaitable[RawClient]]) -> None:
    client = await connect(port)
    await client.send(request("GET", "/echo"))
    response = await client.read_response()
    assert response.status == 200, response.body


@BOTH_PATHS
async def test_clients_trickling_small_bodies_take_no_upstream_connection(
    serve: Callable[..., Awaitable[int]],
    connect: Callable[[int], Awaitable[RawClient]],
    upstream: EchoUpstream,
    fast_lane: bool,
) -> None:
    # The probe's case: bodies streamed upstream as they came, so each slow
    # client held a pooled connection and everyone else got 504.
    port = await serve(fast_lane=fast_lane, opts={**SMALL_POOL, "connect_timeout": "1s"})
    for _ in range(5):
        slow = await connect(port)
        await slow.send(request("POST", "/upload", headers=[("Content-Length", "1000")]) + b"x")
    await _get_ok(port, connect)
    assert [r.target for r in upstream.received] == [b"/echo"]


@BOTH_PATHS
@pytest.mark.parametrize("buffered", [True, False], ids=["buffered", "streamed"])
async def test_a_body_that_stops_coming_is_answered_408_and_frees_the_pool(
    serve: Callable[..., Awaitable[int]],
    connect: Callable[[int], Awaitable[RawClient]],
    upstream: EchoUpstream,
    fast_lane: bool,
    buffered: bool,
) -> None:
    # Buffered: the body fits request_buffering and never reaches the upstream.
    # Streamed: it is larger, its start went upstream, and the stall cuts that
    # upstream request (the connection is closed, not pooled).
    opts = {**SMALL_POOL, "max_connections": "1", "client_body_timeout": "300ms"}
    opts["request_buffering"] = "64KiB" if buffered else "1KiB"
    port = await serve(fast_lane=fast_lane, opts=opts)
    slow = await connect(port)
    head = request("POST", "/upload", headers=[("Content-Length", "100000")])
    await slow.send(head + b"x" * 4000)
    response = await slow.read_response()
    assert response.status == 408
    assert json.loads(response.body)["error"] == "request body timed out"
    assert response.header("Connection") == "close"
    assert await slow.rest_until_close() == b""
    await _get_ok(port, connect)
    assert [r.target for r in upstream.received][-1:] == [b"/echo"]


@BOTH_PATHS
async def test_a_body_sent_in_time_is_relayed_whole(
    serve: Callable[..., Awaitable[int]],
    connect: Callable[[int], Awaitable[RawClient]],
    upstream: EchoUpstream,
    fast_lane: bool,
) -> None:
    # The client body timeout is between reads: a slow but steady body passes.
    port = await serve(fast_lane=fast_lane, opts={"client_body_timeout": "500ms"})
    client = await connect(port)
    body = b"0123456789" * 10
    await client.send(request("POST", "/upload", headers=[("Content-Length", str(len(body)))]))
    for index in range(0, len(body), 25):
        await asyncio.sleep(0.1)
        await client.send(body[index : index + 25])
    assert (await client.read_response()).status == 200
    assert upstream.received[0].body_len == len(body)


@BOTH_PATHS
async def test_a_client_that_does_not_read_its_answer_is_cut_after_the_send_timeout(
    serve: Callable[..., Awaitable[int]],
    connect: Callable[[int], Awaitable[RawClient]],
    fast_lane: bool,
) -> None:
    # Five such clients held a five-connection pool for 50 s, past the read
    # timeout. Now the proxy cuts each after send_timeout and frees its slot.
    port = await serve(
        fast_lane=fast_lane, opts={**SMALL_POOL, "max_connections": "1", "send_timeout": "300ms"}
    )
    stuck = await connect(port)
    await stuck.send(request("GET", f"/big?size={64 * 1024 * 1024}"))
    await _get_ok(port, connect)


class StallingUpstream:
    """An upstream that stops reading a `POST /stall` body after its head; 200 to the rest."""

    def __init__(self) -> None:
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self) -> StallingUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if head.startswith(b"POST /stall "):
                    await asyncio.Event().wait()  # reads nothing more: the body backs up
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()


@pytest.fixture
async def stalling() -> AsyncIterator[StallingUpstream]:
    upstream = await StallingUpstream().start()
    yield upstream
    await upstream.close()


@BOTH_PATHS
async def test_an_upload_the_upstream_stops_reading_frees_its_connection(
    tmp_path: Path,
    stalling: StallingUpstream,
    connect: Callable[[int], Awaitable[RawClient]],
    fast_lane: bool,
) -> None:
    # While the upstream takes no body bytes the proxy reads none from the
    # client either, so a client that leaves went unnoticed and held the
    # connection for about 110 s. The upstream's read timeout now bounds a
    # stalled upload too (nginx's proxy_send_timeout).
    opts = {**SMALL_POOL, "max_connections": "1", "read_timeout": "500ms"}
    routes = legacy_routes(
        tmp_path, f"http://127.0.0.1:{stalling.port}", **opts, request_buffering="false"
    )
    app = create_app(routes_path=routes, reload_on_sighup=False, fast_lane=fast_lane)
    runner, port = await serve_proxy(app)
    try:
        uploader = await connect(port)
        size = 256 * 1024 * 1024
        await uploader.send(request("POST", "/stall", headers=[("Content-Length", str(size))]))

        async def push() -> None:
            for _ in range(size // 65536):
                await uploader.send(b"u" * 65536)

        pushing = asyncio.ensure_future(push())
        await asyncio.sleep(0.3)  # the body backs up at the upstream
        assert not pushing.done()
        pushing.cancel()
        await asyncio.gather(pushing, return_exceptions=True)
        await uploader.close()
        await _get_ok(port, connect)
    finally:
        await runner.cleanup()


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


# --- 4. smaller deviations --------------------------------------------------------


@BOTH_PATHS
@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1:8000, other.example.com",  # a list: scored as smuggling
        "127.0.0.1:8000/path",
        "",
        "user@127.0.0.1:8000",
        "proxy test",
    ],
    ids=["comma-list", "path", "empty", "userinfo", "space"],
)
async def test_a_host_that_is_not_one_host_is_refused(
    serve: Callable[..., Awaitable[int]],
    connect: Callable[[int], Awaitable[RawClient]],
    upstream: EchoUpstream,
    fast_lane: bool,
    host: str,
) -> None:
    client = await connect(await serve(fast_lane=fast_lane))
    await client.send(f"GET /echo HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    response = await client.read_response()
    assert response.status == 400
    assert response.header("Connection") == "close"
    assert upstream.received == []


@BOTH_PATHS
@pytest.mark.parametrize(
    "host", ["proxy.test", "proxy.test:8080", "[::1]:80", "127.0.0.1", "xn--caf-dma.example"]
)
async def test_a_host_that_is_one_host_passes(
    serve: Callable[..., Awaitable[int]],
    connect: Callable[[int], Awaitable[RawClient]],
    upstream: EchoUpstream,
    fast_lane: bool,
    host: str,
) -> None:
    client = await connect(await serve(fast_lane=fast_lane))
    await client.send(request("GET", "/echo", host=host))
    assert (await client.read_response()).status == 200
    assert upstream.received[0].header("Host") == host


@BOTH_PATHS
async def test_an_empty_transfer_encoding_beside_a_length_is_refused(
    serve: Callable[..., Awaitable[int]],
    connect: Callable[[int], Awaitable[RawClient]],
    upstream: EchoUpstream,
    fast_lane: bool,
) -> None:
    client = await connect(await serve(fast_lane=fast_lane))
    headers = [("Transfer-Encoding", ""), ("Content-Length", "5")]
    await client.send(request("POST", "/echo", headers=headers) + b"hello")
    response = await client.read_response()
    assert response.status == 400
    assert upstream.received == []


@BOTH_PATHS
@pytest.mark.parametrize("allowed", [False, True], ids=["default", "underscores-in-headers"])
async def test_header_names_with_underscores_are_dropped_unless_allowed(
    serve: Callable[..., Awaitable[int]],
    connect: Callable[[int], Awaitable[RawClient]],
    upstream: EchoUpstream,
    fast_lane: bool,
    allowed: bool,
) -> None:
    # A server that folds `_` into `-` would read X_Forwarded_For as the
    # proxy's X-Forwarded-For (nginx: underscores_in_headers off).
    port = await serve(fast_lane=fast_lane, underscores_in_headers=allowed)
    client = await connect(port)
    spoof = [("X_Forwarded_For", "6.6.6.6"), ("Content_Length", "5"), ("X-Kept", "1")]
    await client.send(request("GET", "/echo", headers=spoof))
    assert (await client.read_response()).status == 200
    seen = upstream.received[0]
    assert seen.header("X-Kept") == "1"
    assert seen.header("X_Forwarded_For") == ("6.6.6.6" if allowed else None)
    assert seen.header("Content_Length") == ("5" if allowed else None)
    assert seen.all("X-Forwarded-For") == ["127.0.0.1"]


@BOTH_PATHS
async def test_an_unknown_expectation_is_the_proxys_own_417(
    serve: Callable[..., Awaitable[int]],
    connect: Callable[[int], Awaitable[RawClient]],
    upstream: EchoUpstream,
    fast_lane: bool,
) -> None:
    # aiohttp's 417 named its version in Server.
    client = await connect(await serve(fast_lane=fast_lane))
    await client.send(request("POST", "/echo", headers=[("Expect", "x-weird")], body=b"abc"))
    response = await client.read_response()
    assert response.status == 417
    assert response.header("Server") is None
    assert json.loads(response.body)["error"] == "expectation failed"
    assert upstream.received == []


@BOTH_PATHS
async def test_expect_100_continue_still_gets_its_interim_answer(
    serve: Callable[..., Awaitable[int]],
    connect: Callable[[int], Awaitable[RawClient]],
    upstream: EchoUpstream,
    fast_lane: bool,
) -> None:
    client = await connect(await serve(fast_lane=fast_lane))
    headers = [("Expect", "100-continue"), ("Content-Length", "3")]
    await client.send(request("POST", "/echo", headers=headers))
    status, _, _ = await client.read_head()
    assert status == 100
    await client.send(b"abc")
    assert (await client.read_response()).status == 200
    assert upstream.received[0].body_len == 3


@BOTH_PATHS
async def test_options_asterisk_is_answered_by_the_proxy(
    serve: Callable[..., Awaitable[int]],
    connect: Callable[[int], Awaitable[RawClient]],
    upstream: EchoUpstream,
    fast_lane: bool,
) -> None:
    # RFC 9110 §9.3.7: OPTIONS * asks about the server; the proxy is it.
    client = await connect(await serve(fast_lane=fast_lane))
    await client.send(b"OPTIONS * HTTP/1.1\r\nHost: proxy.test\r\n\r\n")
    response = await client.read_response()
    assert response.status == 200
    assert response.header("Allow") == "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
    assert response.header("Server") is None
    assert upstream.received == []


@BOTH_PATHS
@pytest.mark.parametrize("refused", [("0.9", 400), ("2.0", 505)], ids=["0.9", "2.0"])
async def test_request_lines_of_other_http_versions_are_refused_in_http_1_1(
    serve: Callable[..., Awaitable[int]],
    connect: Callable[[int], Awaitable[RawClient]],
    upstream: EchoUpstream,
    fast_lane: bool,
    refused: tuple[str, int],
) -> None:
    version, status = refused
    # llhttp reads both; they were answered `HTTP/0.9 200` and `HTTP/2.0 200`.
    client = await connect(await serve(fast_lane=fast_lane))
    await client.send(f"GET /echo HTTP/{version}\r\nHost: proxy.test\r\n\r\n".encode())
    line = await asyncio.wait_for(client.reader.readuntil(b"\r\n"), TIMEOUT)
    assert line == f"HTTP/1.1 {status} ".encode() + line.split(b" ", 2)[2]
    assert upstream.received == []


@BOTH_PATHS
@pytest.mark.parametrize(
    "case",
    [
        ("http://other.example:8080/echo?a=1", "other.example:8080"),
        ("http://other.example/echo?a=1", "other.example"),
        ("http://[::1]:9000/echo?a=1", "[::1]:9000"),
    ],
    ids=["port", "default-port", "ipv6"],
)
async def test_an_absolute_form_target_sets_the_host(
    serve: Callable[..., Awaitable[int]],
    connect: Callable[[int], Awaitable[RawClient]],
    upstream: EchoUpstream,
    fast_lane: bool,
    case: tuple[str, str],
) -> None:
    # RFC 9112 §3.2.2: the Host field is ignored for an absolute-form target.
    target, host = case
    client = await connect(await serve(fast_lane=fast_lane))
    await client.send(request("GET", target, host="proxy.test"))
    assert (await client.read_response()).status == 200
    seen = upstream.received[0]
    assert (seen.target, seen.header("Host")) == (b"/echo?a=1", host)
    assert seen.header("X-Forwarded-Host") == host


@BOTH_PATHS
async def test_an_absolute_form_target_with_user_info_is_refused(
    serve: Callable[..., Awaitable[int]],
    connect: Callable[[int], Awaitable[RawClient]],
    upstream: EchoUpstream,
    fast_lane: bool,
) -> None:
    client = await connect(await serve(fast_lane=fast_lane))
    await client.send(request("GET", "http://user@other.example/echo", host="proxy.test"))
    assert (await client.read_response()).status == 400
    assert upstream.received == []


# --- the probe's corpus: the upstream sees exactly what the proxy answered ---------

_H = b"Host: proxy.test\r\n"
_SMUGGLED = b"GET /smuggled HTTP/1.1\r\n" + _H + b"\r\n"
CORPUS = {
    "cl-te": b"POST /a HTTP/1.1\r\n"
    + _H
    + b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG",
    "te-cl": b"POST /a HTTP/1.1\r\n"
    + _H
    + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n5c\r\n"
    + _SMUGGLED
    + b"\r\n0\r\n\r\n",
    "two-lengths": b"POST /a HTTP/1.1\r\n"
    + _H
    + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "plus-length": b"POST /a HTTP/1.1\r\n" + _H + b"Content-Length: +5\r\n\r\nhello",
    "te-xchunked": b"POST /a HTTP/1.1\r\n" + _H + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "te-space-before-colon": b"POST /a HTTP/1.1\r\n"
    + _H
    + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    "te-twice": b"POST /a HTTP/1.1\r\n"
    + _H
    + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n",
    "te-empty-and-length": b"POST /a HTTP/1.1\r\n"
    + _H
    + b"Transfer-Encoding:\r\nContent-Length: 5\r\n\r\nhello",
    "obs-fold": b"GET /a HTTP/1.1\r\n" + _H + b"X-Folded: a\r\n b\r\n\r\n",
    "bare-lf": b"GET /a HTTP/1.1\n" + _H.replace(b"\r\n", b"\n") + b"\n",
    "nul-in-target": b"GET /a\x00b HTTP/1.1\r\n" + _H + b"\r\n",
    "pipelined": b"GET /a HTTP/1.1\r\n" + _H + b"\r\nGET /b HTTP/1.1\r\n" + _H + b"\r\n",
    "body-then-pipelined": b"POST /a HTTP/1.1\r\n"
    + _H
    + b"Content-Length: 5\r\n\r\nhelloGET /b HTTP/1.1\r\n"
    + _H
    + b"\r\n",
    "h2c-then-request": b"GET /a HTTP/1.1\r\n"
    + _H
    + b"Connection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
    + _SMUGGLED,
    "expect-weird": b"POST /a HTTP/1.1\r\n"
    + _H
    + b"Expect: x-weird\r\nContent-Length: 5\r\n\r\nhello",
    "absolute-form": b"GET http://other.example/a HTTP/1.1\r\n" + _H + b"\r\n",
    "host-list": b"GET /a HTTP/1.1\r\nHost: proxy.test, other.example\r\n\r\n",
    "two-hosts": b"GET /a HTTP/1.1\r\n" + _H + b"Host: other.example\r\n\r\n",
    "underscore-length": b"GET /a HTTP/1.1\r\n" + _H + b"Content_Length: 5\r\n\r\nhello",
}


async def _answers(client: RawClient) -> list[int]:
    """The statuses of every answer until the connection closes or goes quiet."""
    statuses: list[int] = []
    while True:
        try:
            response = await asyncio.wait_for(client.read_response(), 0.5)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            return statuses
        statuses.append(response.status)


@BOTH_PATHS
@pytest.mark.parametrize("case", sorted(CORPUS))
async def test_the_upstream_sees_exactly_the_requests_the_proxy_answered(
    serve: Callable[..., Awaitable[int]],
    connect: Callable[[int], Awaitable[RawClient]],
    upstream: EchoUpstream,
    fast_lane: bool,
    case: str,
) -> None:
    client = await connect(await serve(fast_lane=fast_lane))
    await client.send(CORPUS[case])
    statuses = await _answers(client)
    relayed = [s for s in statuses if s < 400]
    # Every relayed answer is one request the upstream saw, no more (a smuggled
    # request would be seen without an answer of its own), and none smuggled.
    assert len(upstream.received) == len(relayed), (statuses, upstream.received)
    assert all(b"smuggled" not in r.target for r in upstream.received)
