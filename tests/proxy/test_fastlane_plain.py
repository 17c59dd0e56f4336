"""Plain answers (`proxy.fastlane.plainanswer`) relayed by the fast lane past aiohttp's parser.

A scripted upstream sends each shape of answer; the client must get exactly
what the aiohttp path would send, the plain path must be taken when (and
only when) the answer qualifies, and the upstream connection must be reused
only when its stream can still be trusted.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import pytest

from proxy.serving.app import PROXY
from tests.proxy.forward_support import TIMEOUT, serve_proxy
from tests.proxy.test_fastlane_edges import (
    Scripted,
    _get,
    _heads,
    _proxy,
    _settled,
    read_timeout_route,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from pathlib import Path

    from aiohttp import web

    # Writes the answer to one request (its head) other than /warm.
    Answer = Callable[[bytes, asyncio.StreamWriter], Awaitable[None]]


ANSWER = (
    b"HTTP/1.1 200 OK\r\nServer: scripted\r\nContent-Type: application/json\r\n"
    b'Content-Length: 11\r\nConnection: keep-alive\r\nETag: "v1"\r\nX-Request-ID: theirs\r\n'
    b"Set-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\n"
    b'{"ok":true}'
)


WARM = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"


def _upstream(answer: Answer) -> Scripted:
    """A scripted upstream: /warm gets `WARM`, any other request `answer`."""

    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter, seen: list[bytes]) -> None:
        async for head in _heads(r, seen):
            if head.startswith(b"GET /warm"):
                w.write(WARM)
            else:
                await answer(head, w)
            await w.drain()

    return Scripted(script)


@contextlib.asynccontextmanager
async def _lane(
    tmp_path: Path, answer: Answer, *, routes_yaml: str = "[]"
) -> AsyncIterator[tuple[web.Application, Scripted, asyncio.StreamReader, asyncio.StreamWriter]]:
    """The proxy in front of `_upstream(answer)` and one client connection whose
    /warm request pooled an upstream connection: what follows comes by the lane's callbacks."""
    async with _upstream(answer) as up:
        app = _proxy(tmp_path, up.port, routes_yaml=routes_yaml)
        runner, port = await serve_proxy(app)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            assert await _get(reader, writer, b"/warm") == b"hi"
            yield app, up, reader, writer
        finally:
            writer.close()
            await runner.cleanup()


def _plain_count(app: web.Application) -> int:
    return app[PROXY].metrics.fast_lane_plain_answers


async def _exchange(port: int, targets: list[bytes]) -> list[bytes]:
    """The raw answers (head and body) to GETs of `targets` on one client connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answers = []
    try:
        for target in targets:
            writer.write(
                b"GET %b HTTP/1.1\r\nHost: a\r\nX-Request-ID: rid-%b\r\n\r\n" % (target, target[1:])
            )
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
            body = await asyncio.wait_for(reader.readexactly(length), TIMEOUT)
            answers.append(_without_date(head) + body)
    finally:
        writer.close()
    return answers


def _without_date(head: bytes) -> bytes:
    return b"\r\n".join(line for line in head.split(b"\r\n") if not line.startswith(b"Date: "))


async def test_plain_answers_are_relayed_byte_for_byte_as_the_aiohttp_path_does(
    tmp_path: Path,
) -> None:
    async def answer(_: bytes, w: asyncio.StreamWriter) -> None:
        w.write(ANSWER)

    targets = [b"/a", b"/b", b"/c"]
    async with _upstream(answer) as up:
        lane_app = _proxy(tmp_path, up.port)
        runner, port = await serve_proxy(lane_app)
        try:
            lane = await _exchange(port, targets)
        finally:
            await runner.cleanup()
        # The first answer came on a new connection (a task, aiohttp's parser);
        # the next two on the pooled one, past the parser.
        assert _plain_count(lane_app) == 2
        assert up.connections == 1
        classic_app = _proxy(tmp_path, up.port, fast_lane=False)
        runner, port = await serve_proxy(classic_app)
        try:
            classic = await _exchange(port, targets)
        finally:
            await runner.cleanup()
    assert lane[0] == lane[1].replace(b"rid-b", b"rid-a")
    # aiohttp's path gives `ETag` its canonical case; the lane keeps it as sent.
    assert [a.replace(b'ETag: "v1"', b'Etag: "v1"') for a in lane] == classic
    assert b"X-Request-ID: rid-b\r\n" in lane[1]
    assert b"theirs" not in lane[1]
    assert b"Connection" not in lane[1]
    assert lane[1].count(b"Set-Cookie") == 2


async def test_the_rest_of_a_plain_body_is_relayed_as_it_comes_and_the_connection_reused(
    tmp_path: Path,
) -> None:
    body = bytes(range(256)) * 1024  # 256 KiB

    async def answer(_: bytes, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body[:1000]))
        await w.drain()
        await asyncio.sleep(0.05)
        w.write(body[1000:])

    async with _lane(tmp_path, answer) as (app, up, reader, writer):
        for _ in range(2):
            assert await _get(reader, writer, b"/big") == body
            assert _settled(app)
        assert await _get(reader, writer, b"/warm") == b"hi"
        assert _plain_count(app) == 3
        assert up.connections == 1


@pytest.mark.parametrize(
    "closing",
    [b"Connection: close", b"Proxy-Connection: close"],
    ids=["connection", "proxy-connection"],
)
async def test_a_plain_answer_that_says_close_retires_its_connection(
    tmp_path: Path, closing: bytes
) -> None:
    # llhttp reads Proxy-Connection as Connection: the parser takes that one.
    # The upstream keeps the connection open: only the proxy's reading of the
    # header can retire it.
    async def answer(_: bytes, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 200 OK\r\n%b\r\nContent-Length: 4\r\n\r\nlast" % closing)

    async with _lane(tmp_path, answer) as (app, up, reader, writer):
        assert await _get(reader, writer, b"/last") == b"last"
        assert _plain_count(app) == (1 if closing.startswith(b"Connection") else 0)
        # Had the proxy pooled it, /warm would come on the same connection.
        assert await _get(reader, writer, b"/warm") == b"hi"
        assert up.connections == 2
        assert _settled(app)


@pytest.mark.parametrize(
    "parts",
    [
        # The head in two reads.
        (b"HTTP/1.1 200 OK\r\nContent-", b"Length: 2\r\n\r\nhi"),
        # Legal, but not plain: each goes to aiohttp's parser.
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",),
        (b"HTTP/1.1 200 OK\r\nX-Odd: caf\xc3\xa9\r\nContent-Length: 2\r\n\r\nhi",),
        (b"HTTP/1.1 200 OK \r\nContent-Length: 2\r\n\r\nhi",),
    ],
    ids=["split-head", "chunked", "obs-text", "reason-space"],
)
async def test_answers_that_are_not_plain_go_to_aiohttps_parser(
    tmp_path: Path, parts: tuple[bytes, ...]
) -> None:
    async def answer(_: bytes, w: asyncio.StreamWriter) -> None:
        for index, part in enumerate(parts):
            if index:
                await asyncio.sleep(0.02)
            w.write(part)
            await w.drain()

    async with _lane(tmp_path, answer) as (app, _, reader, writer):
        writer.write(b"GET /odd HTTP/1.1\r\nHost: a\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        assert head.startswith(b"HTTP/1.1 200 OK")  # the reason as sent
        if b"chunked" in head:
            assert await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), TIMEOUT) == (
                b"2\r\nhi\r\n0\r\n\r\n"
            )
        else:
            assert await asyncio.wait_for(reader.readexactly(2), TIMEOUT) == b"hi"
        assert _plain_count(app) == 0
        assert await _get(reader, writer, b"/warm") == b"hi"  # the connection still works
        assert _settled(app)


async def test_a_plain_body_that_stalls_cuts_the_client_after_the_read_timeout(
    tmp_path: Path,
) -> None:
    async def answer(_: bytes, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await w.drain()
        await asyncio.sleep(TIMEOUT)

    stall = read_timeout_route("/stall", "300ms")
    async with _lane(tmp_path, answer, routes_yaml=stall) as (app, _, reader, writer):
        writer.write(b"GET /stall HTTP/1.1\r\nHost: a\r\n\r\n")
        received = await asyncio.wait_for(reader.read(), TIMEOUT)  # until the cut
        assert received.endswith(b"\r\n\r\npartial")
        assert _plain_count(app) == 1
        assert _settled(app)
        counts = app[PROXY].metrics.counts
        assert counts[("stall", "legacy", "GET", 200)] == 1
        assert counts[("(default)", "legacy", "GET", 200)] == 1


async def test_head_requests_are_never_read_as_plain(tmp_path: Path) -> None:
    # A HEAD answer announces a length it does not send: only the parser knows.
    async def answer(_: bytes, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n")

    async with _lane(tmp_path, answer) as (app, up, reader, writer):
        writer.write(b"HEAD /h HTTP/1.1\r\nHost: a\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        assert b"Content-Length: 5000\r\n" in head
        assert await _get(reader, writer, b"/warm") == b"hi"
        assert _plain_count(app) == 1
        assert up.connections == 1


@pytest.mark.parametrize("extra", [b"", b"X-Empty:\r\n"], ids=["plain", "parser"])
async def test_the_read_timeout_counts_from_the_last_read_not_from_the_request(
    tmp_path: Path, extra: bytes
) -> None:
    # A read timeout of 1 s; the head and part of the body after 0.7 s, the
    # rest 0.6 s later: no gap between reads reaches 1 s, so nothing is cut.
    # (An empty header value makes the same answer go through aiohttp's parser.)
    async def answer(_: bytes, w: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.7)
        w.write(b"HTTP/1.1 200 OK\r\n%bContent-Length: 8\r\n\r\nfirst" % extra)
        await w.drain()
        await asyncio.sleep(0.6)
        w.write(b"end")

    slow = read_timeout_route("/slow", "1s")
    async with _lane(tmp_path, answer, routes_yaml=slow) as (app, _, reader, writer):
        assert await _get(reader, writer, b"/slow") == b"firstend"
        assert _plain_count(app) == (1 if not extra else 0)
        assert _settled(app)
