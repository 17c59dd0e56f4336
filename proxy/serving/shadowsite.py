"""The in-process `new` app's own door for shadow copies: a private Unix socket.

A copy must never share the client's request or response writer (the client's
answer would carry the copy's bytes). A real HTTP request on a socket of its
own gives each copy its own request, parser and writer, and the same
dispatch into the new app as a client's request (`InProcessApp.handle`). The
socket lives in a directory only this user can open.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from proxy.core.state import InProcessHandler

__all__ = ["ShadowSite"]


class ShadowSite:
    """`await start()` serves the in-process app on `path`; `await close()` stops it."""

    __slots__ = ("_dir", "_inprocess", "_runner", "path")

    def __init__(self, inprocess: InProcessHandler) -> None:
        self._inprocess = inprocess
        self._runner: web.AppRunner | None = None
        self._dir: Path | None = None
        self.path: str | None = None

    async def start(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, handle_signals=False, access_log=None, auto_decompress=False)
        await runner.setup()
        self._runner = runner
        self._dir = Path(tempfile.mkdtemp(prefix="club-proxy-shadow-"))  # mode 0700
        path = str(self._dir / "new.sock")
        await web.UnixSite(runner, path).start()
        self.path = path
        return path

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        self.path = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        # The copy already carries the headers an upstream would get.
        return await self._inprocess.handle(
            request, headers=request.headers, request_id=request.headers.get("X-Request-ID")
        )
