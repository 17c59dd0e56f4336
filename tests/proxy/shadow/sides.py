"""Two real HTTP sides for live-shadow tests: a primary and a candidate that misbehaves on request.

`Side(mode)` serves the same small JSON API on a loopback port; `mode` makes
the candidate differ or fail the way the issue's isolation cases need:
`same`, `chunked` (the same JSON in chunked pieces), `random` (a fresh id in every body), `sleep` (10 s before answering), `500`, `reset` (the connection is cut
before any answer), `endless` (a body that never ends), `renamed` (a key
renamed). Every request it sees is kept in `seen` (method, path, headers).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from multidict import CIMultiDictProxy

ITEMS: list[dict[str, object]] = [
    {"id": n, "name": f"item {n}", "tags": ["a", "b"]} for n in range(10)
]
BIG = b"x" * (300 * 1024)


@dataclass
class Side:
    mode: str = "same"
    seen: list[tuple[str, str, CIMultiDictProxy[str]]] = field(default_factory=list)
    runner: web.AppRunner | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> Side:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]
        return self

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.method, request.path_qs, request.headers))
        mode = self.mode
        if mode == "sleep":
            await asyncio.sleep(10)
        elif mode == "500":
            return web.json_response({"error": "boom"}, status=500)
        elif mode == "reset":
            assert request.transport is not None
            request.transport.abort()
            await asyncio.sleep(1)
        elif mode == "endless":
            return await _endless(request)
        elif mode == "chunked" and request.method == "GET":
            return await _chunked(request, _items_body(request, ITEMS))
        if request.path == "/api/big":
            return web.Response(body=BIG, content_type="application/octet-stream")
        items: list[dict[str, object]] = ITEMS
        if mode == "random":
            items = [{"nonce": uuid.uuid4().hex}, *ITEMS[:3]]
        if mode == "renamed":
            items = [{"ident" if k == "id" else k: v for k, v in item.items()} for item in ITEMS]
        return web.Response(body=_items_body(request, items), content_type="application/json")


def _items_body(request: web.Request, items: list[dict[str, object]]) -> bytes:
    return json.dumps({"items": items, "path": request.path_qs}).encode()


async def _chunked(request: web.Request, body: bytes) -> web.StreamResponse:
    # The same JSON as the plain answer, in three chunked pieces with pauses.
    response = web.StreamResponse(headers={"Content-Type": "application/json; charset=utf-8"})
    await response.prepare(request)
    third = len(body) // 3
    for piece in (body[:third], body[third : 2 * third], body[2 * third :]):
        await response.write(piece)
        await asyncio.sleep(0.01)
    await response.write_eof()
    return response


async def _endless(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    await response.prepare(request)
    chunk = b"[" + b"0," * 8191
    while True:
        await response.write(chunk)
