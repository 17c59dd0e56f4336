"""Helpers for the forwarding tests: raw HTTP/1.1 over a socket, the proxy under test."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from aiohttp import web

from proxy.serving.app import create_app
from proxy.serving.protocol import ProxyAppRunner
from tests.proxy.echo_upstream import EchoUpstream

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable


TIMEOUT = 10.0


@dataclass
class RawResponse:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    complete: bool = True
    informational: list[int] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        lname = name.lower()
        return [v for k, v in self.headers if k.lower() == lname]

    def names(self, *, keep_case: bool = False) -> list[str]:
        return [k if keep_case else k.lower() for k, _ in self.headers]


class RawClient:
    """One client TCP connection speaking bytes, to see exactly what the proxy sends."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()

    async def read_head(self) -> tuple[int, str, list[tuple[str, str]]]:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        lines = head[:-4].decode("latin-1").split("\r\n")
        _, status, reason = [*lines[0].split(" ", 2), ""][:3]
        headers = [(k, v.strip()) for k, _, v in (line.partition(":") for line in lines[1:])]
        return int(status), reason, headers

    async def read_response(self, *, head: bool = False) -> RawResponse:
        """The next final response; 1xx responses are skipped and listed."""
        informational = []
        while True:
            status, reason, headers = await self.read_head()
            if status >= 200:
                break
            informational.append(status)
        response = RawResponse(status, reason, headers, b"", informational=informational)
        if head or status in {204, 304}:
            return response
        try:
            response.body = await asyncio.wait_for(self._body(response), TIMEOUT)
        except asyncio.IncompleteReadError as exc:
            response.body, response.complete = exc.partial, False
        return response

    async def _body(self, response: RawResponse) -> bytes:
        te = response.header("Transfer-Encoding")
        if te is not None and "chunked" in te.lower():
            parts: list[bytes] = []
            try:
                while True:
                    size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                    if size == 0:
                        await self.reader.readuntil(b"\r\n")
                        return b"".join(parts)
                    parts.append(await self.reader.readexactly(size))
                    await self.reader.readexactly(2)
            except asyncio.IncompleteReadError as exc:
                raise asyncio.IncompleteReadError(b"".join(parts) + exc.partial, None) from exc
        if (cl := response.header("Content-Length")) is not None:
            return await self.reader.readexactly(int(cl))
        return await self.reader.read()

    async def rest_until_close(self) -> bytes | None:
        """Everything until the other side closes, or None if it does not close."""
        try:
            return await asyncio.wait_for(self.reader.read(), TIMEOUT)
        except ConnectionError:
            return b""
        except TimeoutError:
            return None


def request(
    method: str = "GET",
    target: str = "/echo",
    *,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    host: str = "proxy.test",
) -> bytes:
    """A well-formed HTTP/1.1 request as bytes (Content-Length added for a body)."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    lines += [f"{k}: {v}" for k, v in headers or []]
    if body and not any(
        k.lower() in {"content-length", "transfer-encoding"} for k, _ in headers or []
    ):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def consecutive_free_ports(count: int) -> int:
    """A port P with P .. P + count - 1 all free, below the kernel's ephemeral range.

    For a server that binds several ports from one number (worker i's admin API
    on admin + i): picked outside the range the kernel hands out for outgoing
    connections, so no client socket of the test run takes one meanwhile.
    """
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(200):
        base = random.randrange(10_000, low - count)
        sockets = [socket.socket() for _ in range(count)]
        try:
            for offset, sock in enumerate(sockets):
                sock.bind(("127.0.0.1", base + offset))
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
        return base
    msg = f"no {count} consecutive free ports found"
    raise RuntimeError(msg)


def legacy_routes(tmp_path: Path, upstream_url: str, **upstream_opts: str) -> Path:
    """A routes.yaml sending everything to `upstream_url` (upstream `legacy`)."""
    opts = "".join(f", {k}: {v}" for k, v in upstream_opts.items())
    path = tmp_path / "routes.yaml"
    path.write_text(
        "version: 1\n"
        "upstreams:\n"
        f'  legacy: {{url: "{upstream_url}"{opts}}}\n'
        "default: legacy\n"
        "routes: []\n",
        encoding="utf-8",
    )
    return path


def proxy_app(tmp_path: Path, upstream_url: str, **upstream_opts: str) -> web.Application:
    """The full proxy app over `legacy_routes`."""
    path = legacy_routes(tmp_path, upstream_url, **upstream_opts)
    return create_app(routes_path=path, reload_on_sighup=False)


@pytest.fixture
async def upstream() -> AsyncIterator[EchoUpstream]:
    echo = await EchoUpstream().start()
    yield echo
    await echo.close()


async def serve_proxy(app: web.Application) -> tuple[ProxyAppRunner, int]:
    """Serve `app` on a free loopback port the way `club-proxy run` does (its runner)."""
    runner = ProxyAppRunner(app, shutdown_timeout=TIMEOUT)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port: int = runner.addresses[0][1]
    return runner, port


@pytest.fixture
async def client_of() -> AsyncIterator[Callable[[int], Awaitable[RawClient]]]:
    """Opens raw client connections to a port; all are closed after the test."""
    clients: list[RawClient] = []

    async def connect(port: int) -> RawClient:
        client = await RawClient.connect(port)
        clients.append(client)
        return client

    yield connect
    for client in clients:
        await client.close()


@pytest.fixture
async def proxy_port(upstream: EchoUpstream, tmp_path: Path) -> AsyncIterator[int]:
    runner, port = await serve_proxy(proxy_app(tmp_path, upstream.url))
    yield port
    await runner.cleanup()


@pytest.fixture
async def raw(proxy_port: int) -> AsyncIterator[RawClient]:
    client = await RawClient.connect(proxy_port)
    yield client
    await client.close()
