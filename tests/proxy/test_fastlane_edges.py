"""Fast-lane edge cases found in review, each pinned by a real exchange.

A scripted upstream (raw asyncio server) produces the awkward answers: a big
body in one write, an answer nobody asked for, a death mid-body.
"""

from __future__ import annotations

import asyncio
import gc
import socket
from typing import TYPE_CHECKING, Self

import pytest
import uvloop

from proxy.core import headers as header_rules
from proxy.core.headers import ForwardingPolicy, upstream_request_head
from proxy.serving.app import PROXY, create_app
from proxy.upstream.client import ConnectionPool, _Slots
from proxy.upstream.limits import ClientLimits
from tests.proxy import forward_support
from tests.proxy.forward_support import TIMEOUT, serve_proxy

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from pathlib import Path

    from aiohttp import web

    from tests.proxy.echo_upstream import EchoUpstream

upstream = forward_support.upstream


class Scripted:
    """An upstream whose connections run `script`; `seen` lists request lines."""

    def __init__(self, script: Callable[..., Awaitable[None]]) -> None:
        self.script = script
        self.seen: list[bytes] = []
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.script(reader, writer, self.seen)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


async def _heads(reader: asyncio.StreamReader, seen: list[bytes]) -> AsyncIterator[bytes]:
    while True:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return
        seen.append(head.split(b"\r\n", 1)[0])
        yield head


def _proxy(
    tmp_path: Path,
    port: int,
    *,
    read_timeout: str | None = None,
    fast_lane: bool = True,
    routes_yaml: str = "[]",
) -> web.Application:
    timeout = f", read_timeout: {read_timeout}" if read_timeout else ""
    routes = tmp_path / "routes.yaml"
    routes.write_text(
        "version: 1\n"
        f'upstreams: {{legacy: {{url: "http://127.0.0.1:{port}"{timeout}}}}}\n'
        f"default: legacy\nroutes: {routes_yaml}\n",
        encoding="utf-8",
    )
    return create_app(routes_path=routes, reload_on_sighup=False, fast_lane=fast_lane)


def read_timeout_route(path: str, timeout: str) -> str:
    """`routes_yaml` for `_proxy`: one route for GET `path` with its own read timeout.

    Tests give the short timeout to the route under test only: the scripted
    upstream runs in the test's event loop, so a stall of the whole process
    must not cut the warm-up request on the same connection.
    """
    route_id = path.strip("/")
    return f'[{{id: {route_id}, match: "GET {path}", to: legacy, timeouts: {{read: {timeout}}}}}]'


async def _get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target: bytes) -> bytes:
    writer.write(b"GET %b HTTP/1.1\r\nHost: a\r\n\r\n" % target)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    return await asyncio.wait_for(reader.readexactly(length), TIMEOUT)


def _settled(app: web.Application) -> bool:
    proxy = app[PROXY]
    pool = proxy.pools.current["legacy"]
    return proxy.metrics.in_flight == 0 and pool.active == 0


async def test_a_body_over_the_readers_limit_in_one_read_is_answered_and_settled(
    tmp_path: Path,
) -> None:
    # 200 kB in one write: more than aiohttp's reader takes before it holds
    # the parser back, so the lane's first read of the body does not see it all.
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter, seen: list[bytes]) -> None:
        async for head in _heads(r, seen):
            body = b"x" * (10 if b"/warm" in head else 200_000)
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))
            await w.drain()

    async with Scripted(script) as up:
        app = _proxy(tmp_path, up.port)
        runner, port = await serve_proxy(app)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            assert await _get(reader, writer, b"/warm") == b"x" * 10
            for _ in range(3):  # on the pooled connection, same client connection
                assert await _get(reader, writer, b"/big") == b"x" * 200_000
                assert _settled(app)
            assert up.connections == 1
        finally:
            writer.close()
            await runner.cleanup()


def test_an_answer_nobody_asked_for_retires_the_connection(tmp_path: Path) -> None:
    # Under uvloop, as `club-proxy run` serves: it delivers both answers in one read.
    uvloop.run(_answer_nobody_asked_for(tmp_path))


async def _answer_nobody_asked_for(tmp_path: Path) -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter, seen: list[bytes]) -> None:
        async for head in _heads(r, seen):
            if head.startswith(b"GET /warm"):
                w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
                await w.drain()
                continue
            # The answer and an unasked-for second one, in one write.
            w.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nextra"
            )
            await w.drain()

    async with Scripted(script) as up:
        app = _proxy(tmp_path, up.port)
        runner, port = await serve_proxy(app)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            # Pooled by /warm: the next answer comes through the lane's callback.
            assert await _get(reader, writer, b"/warm") == b"hi"
            for _ in range(3):
                assert await _get(reader, writer, b"/x") == b"hi"
            # Never reused after it sent an extra answer: /warm's connection
            # served one /x, then one new connection for each of the others.
            assert up.connections == 3
        finally:
            writer.close()
            await runner.cleanup()


async def test_a_request_pipelined_behind_a_cut_answer_never_reaches_the_upstream(
    tmp_path: Path,
) -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter, seen: list[bytes]) -> None:
        async for head in _heads(r, seen):
            if head.startswith(b"GET /die"):
                w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
                await w.drain()
                await asyncio.sleep(0.3)
                w.transport.abort()
                return
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await w.drain()

    async with Scripted(script) as up:
        app = _proxy(tmp_path, up.port)
        runner, port = await serve_proxy(app)
        try:
            # Two pooled connections, so the pipelined request would find one idle.
            clients = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
            await asyncio.gather(*(_get(r, w, b"/warm") for r, w in clients))
            reader, writer = clients[0]
            writer.write(b"GET /die HTTP/1.1\r\nHost: a\r\n\r\n")
            await asyncio.wait_for(reader.readuntil(b"partial"), TIMEOUT)
            writer.write(b"DELETE /account HTTP/1.1\r\nHost: a\r\n\r\n")
            assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""  # cut
            await asyncio.sleep(0.2)
            assert not any(line.startswith(b"DELETE") for line in up.seen)
            for _, w in clients:
                w.close()
        finally:
            await runner.cleanup()


def test_a_hand_over_while_the_client_socket_is_full_keeps_aiohttps_flow_control(
    tmp_path: Path,
) -> None:
    # Under uvloop, as `club-proxy run` serves (its transport reports the resume).
    uvloop.run(_hand_over_while_paused(tmp_path))


async def _hand_over_while_paused(tmp_path: Path) -> None:
    errors: list[object] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: errors.append(context.get("message")))
    size = 4 << 20

    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter, seen: list[bytes]) -> None:
        async for head in _heads(r, seen):
            if head.startswith(b"GET /big"):
                w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
                w.write(b"y" * size)
            else:
                if head.startswith(b"POST"):
                    await r.readexactly(3)
                w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await w.drain()

    async with Scripted(script) as up:
        app = _proxy(tmp_path, up.port)
        runner, port = await serve_proxy(app)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a slow reader
        sock.connect(("127.0.0.1", port))
        sock.setblocking(False)
        reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 16)
        try:
            writer.write(b"GET /warm HTTP/1.1\r\nHost: a\r\n\r\n")
            await asyncio.wait_for(reader.readuntil(b"ok"), TIMEOUT)
            writer.write(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
            await asyncio.sleep(0.2)  # the answer fills the sockets; the lane pauses
            # Pipelined behind it, with a body: hands the connection to aiohttp
            # while the lane's writing is paused.
            writer.write(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc")
            data = b""
            while not data.endswith(b"ok"):
                chunk = await asyncio.wait_for(reader.read(1 << 14), TIMEOUT)
                assert chunk, "connection closed early"
                data += chunk
                await asyncio.sleep(0.0002)
            await asyncio.sleep(0.2)
            assert data.count(b"HTTP/1.1 200 OK") == 2
            assert len(data) > size
            assert errors == []
        finally:
            loop.set_exception_handler(None)
            writer.close()
            await runner.cleanup()


async def test_a_waiter_cancelled_as_a_slot_is_given_ends_cancelled() -> None:
    slots = _Slots(1)
    assert slots.try_take()
    waiter = asyncio.ensure_future(slots.take())
    await asyncio.sleep(0)  # queued
    waiter.cancel()
    slots.give()  # same loop turn: skips the cancelled waiter
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert slots.try_take()  # the slot is free, not lost


def test_long_connection_values_are_not_cached() -> None:
    header_rules._token_cache.clear()
    tokens = b", ".join(b"x-%d" % i for i in range(1500))
    raw = ((b"Host", b"a"), (b"Connection", tokens))
    policy = ForwardingPolicy()
    for _ in range(3):
        upstream_request_head(
            "GET",
            "/",
            raw,
            policy=policy,
            peer="127.0.0.1",
            scheme="http",
            request_id="r",
            default_host="a",
            body=False,
        )
    assert header_rules._token_cache == {}


async def test_a_closed_pooled_connection_cancels_its_read_timer(upstream: EchoUpstream) -> None:
    pool = ConnectionPool(
        host="127.0.0.1",
        port=upstream.port,
        ssl=None,
        limit=1,
        keepalive_timeout=30,
        limits=ClientLimits(),
    )
    head = b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n"
    exchange = await pool.request(
        "GET", head, None, chunked=False, connect_timeout=5, read_timeout=30
    )
    while await exchange.content.readany():
        pass
    exchange.finish()
    proto = exchange.proto
    await pool.close()
    await asyncio.sleep(0.05)
    gc.collect()
    # A pending 30 s timer would keep this closed connection alive that long.
    assert proto._read_timeout_handle is None


async def test_an_upstream_stalling_mid_body_is_cut_after_the_read_timeout(
    tmp_path: Path,
) -> None:
    release = asyncio.Event()

    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter, seen: list[bytes]) -> None:
        async for head in _heads(r, seen):
            if head.startswith(b"GET /warm"):
                w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            else:  # half the body, then silence: the relay waits on reads
                w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"z" * 500)
                await w.drain()
                await release.wait()
            await w.drain()

    async with Scripted(script) as up:
        app = _proxy(tmp_path, up.port, routes_yaml=read_timeout_route("/stall", "300ms"))
        runner, port = await serve_proxy(app)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            assert await _get(reader, writer, b"/warm") == b"ok"  # pooled: the lane's relay
            writer.write(b"GET /stall HTTP/1.1\r\nHost: a\r\n\r\n")
            received = await asyncio.wait_for(reader.read(), TIMEOUT)  # until the cut
            assert received.endswith(b"z" * 500)  # the head and half the body, never more
            assert _settled(app)
            errors = app[PROXY].metrics.render()
            assert b'club_proxy_upstream_errors_total{kind="aborted",target="legacy"} 1.0' in errors
        finally:
            release.set()
            writer.close()
            await runner.cleanup()


@pytest.mark.parametrize("fast_lane", [True, False], ids=["fast-lane", "aiohttp-path"])
@pytest.mark.parametrize("pooled", [True, False], ids=["pooled", "fresh"])
async def test_an_upstream_silent_after_a_1xx_times_out(
    tmp_path: Path, *, fast_lane: bool, pooled: bool
) -> None:
    release = asyncio.Event()

    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter, seen: list[bytes]) -> None:
        async for head in _heads(r, seen):
            if head.startswith(b"GET /warm"):
                w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            else:  # Early Hints, then nothing
                w.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n")
                await w.drain()
                await release.wait()
            await w.drain()

    async with Scripted(script) as up:
        app = _proxy(
            tmp_path,
            up.port,
            fast_lane=fast_lane,
            routes_yaml=read_timeout_route("/hints", "300ms"),
        )
        runner, port = await serve_proxy(app)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            if pooled:
                assert await _get(reader, writer, b"/warm") == b"ok"
            writer.write(b"GET /hints HTTP/1.1\r\nHost: a\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
            assert head.startswith(b"HTTP/1.1 504 ")
        finally:
            release.set()
            writer.close()
            await runner.cleanup()
