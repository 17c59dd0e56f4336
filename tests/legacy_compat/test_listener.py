"""The reconnecting listener: backoff, and a network path that goes silent."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit, urlunsplit

import pytest

from legacy_compat import Backoff, PgQueue
from tests.legacy_compat.pgqueue_support import Recorder, wait_until

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


def test_backoff_doubles_up_to_the_maximum() -> None:
    backoff = Backoff(initial=0.1, maximum=1.0, jitter=0)
    assert [backoff.delay(n) for n in range(1, 7)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


def test_backoff_jitter_only_shortens() -> None:
    backoff = Backoff(initial=1.0, maximum=1.0, jitter=0.5)
    delays = [backoff.delay(1) for _ in range(200)]
    assert all(0.5 <= d <= 1.0 for d in delays)
    assert len(set(delays)) > 1


@pytest.mark.parametrize(
    "options",
    [
        {"initial": 0},  # no delay at all would spin on a dead server
        {"initial": 2.0, "maximum": 1.0},  # initial above the cap
        {"jitter": 1.5},  # jitter is a fraction of the delay
    ],
)
def test_backoff_rejects_nonsense(options: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="Backoff"):
        Backoff(**options)


class BlackholeProxy:
    """Loopback TCP proxy to PostgreSQL that can go silent on its open connections.

    `blackhole()` stops forwarding on every connection open at that moment,
    without closing the sockets: what a cut network path looks like from
    both ends. Connections opened afterwards are forwarded normally.
    """

    def __init__(self, pg_dsn: str) -> None:
        parts = urlsplit(pg_dsn)
        host = parse_qs(parts.query).get("host", [parts.hostname or "127.0.0.1"])[0]
        self._unix = host.startswith("/")
        self._target = (host, parts.port or 5432)
        self._dead: set[asyncio.StreamWriter] = set()
        self._open: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    def blackhole(self) -> None:
        self._dead |= self._open

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in self._open:
            writer.close()
        for task in self._tasks:
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await task

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, port = self._target
        if self._unix:
            up_reader, up_writer = await asyncio.open_unix_connection(f"{host}/.s.PGSQL.{port}")
        else:
            up_reader, up_writer = await asyncio.open_connection(host, port)
        self._open |= {writer, up_writer}
        for src, dst, key in ((reader, up_writer, writer), (up_reader, writer, writer)):
            task = asyncio.create_task(self._pump(src, dst, key))
            self._tasks.add(task)

    async def _pump(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, key: asyncio.StreamWriter
    ) -> None:
        while data := await src.read(65536):
            if key in self._dead:
                continue  # swallowed: the path is cut, nobody is told
            dst.write(data)
            await dst.drain()
        dst.close()


@pytest.fixture
async def proxy_dsn(pg_dsn: str) -> AsyncIterator[tuple[str, BlackholeProxy]]:
    proxy = BlackholeProxy(pg_dsn)
    port = await proxy.start()
    parts = urlsplit(pg_dsn)
    user = parts.username or "postgres"
    dsn = urlunsplit(("postgresql", f"{user}@127.0.0.1:{port}", parts.path, "", ""))
    yield dsn, proxy
    await proxy.close()


async def test_a_silent_network_cut_is_noticed_and_repaired(
    proxy_dsn: tuple[str, BlackholeProxy],
) -> None:
    dsn, proxy = proxy_dsn
    got = Recorder()
    reconnected = asyncio.Event()

    async def on_reconnect() -> None:
        reconnected.set()

    queue = PgQueue(
        dsn,
        window=0.05,
        health_interval=0.2,
        health_timeout=0.5,
        backoff=Backoff(initial=0.05),
        on_reconnect=on_reconnect,
    )
    queue.on("x", got)
    async with queue:
        before = queue.listener_pid
        proxy.blackhole()  # no RST, no FIN: only the health check can tell
        await asyncio.wait_for(reconnected.wait(), 60)
        assert queue.listener_pid not in (None, before)
        await queue.notify("x", {"n": 1})
        await wait_until(lambda: len(got.events) == 1)
        stats = queue.stats()
    assert (stats.connection_losses, stats.reconnects) == (1, 1)
