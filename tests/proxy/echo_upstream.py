"""A real HTTP/1.1 upstream on loopback that shows exactly what reached it.

Written on asyncio streams, not aiohttp, so it sees the raw request line and
header bytes in order and answers with bytes the test controls. Every request
is recorded in `received`; the answer depends on the path:

    /echo...            200 JSON: request line, headers in order, body sha256
    /gzip               a gzip body with Content-Encoding and its compressed length
    /cookies            three Set-Cookie lines (one with a comma in Expires)
    /bigcookie          one 12 KiB Set-Cookie line
    /big?size=N         N bytes, Content-Length framed (HEAD: the header, no body)
    /chunked?size=N     N bytes, chunked, in 64 KiB chunks
    /stream?size=N      N bytes chunked, flushed chunk by chunk with a pause (&pause=S, 0.01)
    /die?size=N         promises 2N bytes with Content-Length, sends N, closes
    /die-chunked?size=N sends N bytes chunked, then closes without the last chunk
    /status/NNN         that status, no body (a 304 carries a stray Transfer-Encoding)
    /bare               a body with no Content-Type, no Server, no Date
    /hop                response hop-by-hop headers, one named in Connection
    /early-hints        103 Early Hints, then 200
    /slow?delay=S       waits S seconds before answering
    /hold               headers and a first chunk, the rest once `release` is set
    /drop               reads the request, closes without answering
    /keepalive-close    answers, then closes the connection (no Connection: close)
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import json
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

GZIP_PLAIN = b"club-proxy gzip body " * 200
GZIP_BODY = gzip.compress(GZIP_PLAIN, mtime=0)
COOKIES = (
    "a=1; Path=/",
    "b=2; Expires=Wed, 21 Oct 2037 07:28:00 GMT; HttpOnly",
    "c=3; Path=/x; SameSite=Lax",
)

BIG_COOKIE = "big=" + "v" * 12 * 1024


def pattern(size: int) -> bytes:
    """Deterministic body bytes of `size` (not all zero, so truncation shows)."""
    block = bytes(range(256)) * 256
    reps, rest = divmod(size, len(block))
    return block * reps + block[:rest]


@dataclass(slots=True)
class Received:
    request_line: bytes
    headers: list[tuple[str, str]]
    body_sha256: str
    body_len: int
    chunked: bool

    @property
    def target(self) -> bytes:
        return self.request_line.split(b" ")[1]

    @property
    def method(self) -> str:
        return self.request_line.split(b" ")[0].decode()

    def header(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        lname = name.lower()
        return [v for k, v in self.headers if k.lower() == lname]


@dataclass
class EchoUpstream:
    host: str = "127.0.0.1"
    received: list[Received] = field(default_factory=list)
    accepted: int = 0
    closed: int = 0
    port: int = 0
    # Set when a streaming response notices its peer went away.
    peer_gone: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> EchoUpstream:
        self._server = await asyncio.start_server(self._serve, self.host, 0, limit=1 << 20)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.accepted += 1
        try:
            while await self._one(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self.closed += 1
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False
        lines = head[:-4].split(b"\r\n")
        headers = [
            (k.decode("latin-1"), v.strip().decode("latin-1"))
            for k, _, v in (line.partition(b":") for line in lines[1:])
        ]
        received = Received(lines[0], headers, "", 0, chunked=False)
        body = await self._body(reader, received)
        received.body_sha256 = hashlib.sha256(body).hexdigest()
        received.body_len = len(body)
        self.received.append(received)
        return await self._answer(received, reader, writer)

    async def _body(self, reader: asyncio.StreamReader, received: Received) -> bytes:
        if (te := received.header("Transfer-Encoding")) and "chunked" in te.lower():
            received.chunked = True
            parts: list[bytes] = []
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    return b"".join(parts)
                parts.append(await reader.readexactly(size))
                await reader.readexactly(2)
        if cl := received.header("Content-Length"):
            return await reader.readexactly(int(cl))
        return b""

    async def _answer(  # noqa: C901, PLR0912, PLR0915 - one flat table of test endpoints reads best
        self, req: Received, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        url = urlsplit(req.target.decode("latin-1"))
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        path = url.path
        size = int(query.get("size", "0"))
        head = req.method == "HEAD"
        if path == "/drop":
            return False
        if path == "/slow":
            await asyncio.sleep(float(query.get("delay", "1")))
        if path == "/gzip":
            await _send(
                writer,
                b"200 OK",
                [("Content-Type", "text/plain"), ("Content-Encoding", "gzip")],
                GZIP_BODY,
                head=head,
            )
        elif path == "/cookies":
            await _send(writer, b"200 OK", [("Set-Cookie", c) for c in COOKIES], b"ok")
        elif path == "/bigcookie":
            await _send(writer, b"200 OK", [("Set-Cookie", BIG_COOKIE)], b"ok")
        elif path == "/big":
            await _send(writer, b"200 OK", [("Content-Type", "application/x-big")], b"", size=size)
            if not head:
                await self._stream(writer, reader, size, chunked=False, pause=0)
        elif path in {"/chunked", "/stream"}:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            pause = float(query.get("pause", "0.01")) if path == "/stream" else 0
            await self._stream(writer, reader, size, chunked=True, pause=pause)
            writer.write(b"0\r\n\r\n")
        elif path == "/hold":
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
            await writer.drain()
            await self.release.wait()
            writer.write(b"4\r\nlast\r\n0\r\n\r\n")
        elif path == "/die":
            await _send(writer, b"200 OK", [], b"", size=2 * size)
            writer.write(pattern(size))
            await writer.drain()
            return False
        elif path == "/die-chunked":
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            writer.write(b"%x\r\n%s\r\n" % (size, pattern(size)))
            await writer.drain()
            return False
        elif path.startswith("/status/"):
            status = path.removeprefix("/status/").encode()
            extra = [("Transfer-Encoding", "chunked")] if status == b"304" else []
            writer.write(b"HTTP/1.1 %s X\r\n" % status + _head_bytes([*extra, ("ETag", '"v1"')]))
        elif path == "/bare":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbare")
        elif path == "/hop":
            hop = [
                ("Connection", "X-Hop, keep-alive"),
                ("X-Hop", "1"),
                ("Keep-Alive", "timeout=5"),
                ("Proxy-Connection", "keep-alive"),
                ("X-End", "2"),
            ]
            await _send(writer, b"200 OK", hop, b"hop")
        elif path == "/early-hints":
            writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n")
            await _send(writer, b"200 OK", [], b"hinted")
        else:
            await self._echo(writer, req)
        await writer.drain()
        return path != "/keepalive-close"

    async def _echo(self, writer: asyncio.StreamWriter, req: Received) -> None:
        body = json.dumps(
            {
                "request_line": req.request_line.decode("latin-1"),
                "headers": req.headers,
                "body_sha256": req.body_sha256,
                "body_len": req.body_len,
                "chunked": req.chunked,
                "port": self.port,
            }
        ).encode()
        await _send(writer, b"200 OK", [("Content-Type", "application/json")], body)

    async def _stream(
        self,
        writer: asyncio.StreamWriter,
        reader: asyncio.StreamReader,
        size: int,
        *,
        chunked: bool,
        pause: float,
    ) -> None:
        # A reader-side EOF while we stream means the proxy closed this
        # connection (it never pipelines), which is what abort tests wait for.
        watch = asyncio.ensure_future(reader.read(1))
        try:
            block = pattern(1 << 16)
            sent = 0
            while sent < size:
                piece = block[: min(len(block), size - sent)]
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                sent += len(piece)
                drain = asyncio.ensure_future(writer.drain())
                await asyncio.wait({drain, watch}, return_when=asyncio.FIRST_COMPLETED)
                if watch.done():
                    drain.cancel()
                    self.peer_gone.set()
                    raise ConnectionResetError
                await drain
                if pause:
                    await asyncio.sleep(pause)
        finally:
            watch.cancel()


def _head_bytes(headers: list[tuple[str, str]]) -> bytes:
    return b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in headers) + b"\r\n"


async def _send(
    writer: asyncio.StreamWriter,
    status: bytes,
    headers: list[tuple[str, str]],
    body: bytes,
    *,
    size: int | None = None,
    head: bool = False,
) -> None:
    length = len(body) if size is None else size
    all_headers = [*headers, ("Content-Length", str(length))]
    writer.write(b"HTTP/1.1 " + status + b"\r\n" + _head_bytes(all_headers))
    if not head and body:
        writer.write(body)
    await writer.drain()
