"""The shadow results store behind real proxies: a restart, two replicas, PostgreSQL going away.

Each test serves the proxy the way `club-proxy run` does, with a primary and
a candidate on loopback (`sides.Side`), and its results in the test's own
PostgreSQL database (`shadow_store`). The candidate answers like the primary
(`same`), or with a key renamed (`renamed`) for a known part of the traffic,
so every total is known exactly:

- a restart: the counts and examples of the stopped proxy, written when it
  stopped, are what a new proxy on the same store reports, and it adds to them;
- two replicas, one in this process and one a real `club-proxy run` process,
  each with part of the traffic: both report the same totals and verdict;
- an outage: the store's connection goes through a TCP relay on loopback
  that the test cuts and restores; every client request during the outage
  gets its answer, and the counts made meanwhile reach the store once it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiohttp
import asyncpg
import pytest

from proxy.__main__ import main
from proxy.routing.model import ShadowStore
from proxy.serving.app import create_app
from tests.proxy.forward_support import RawClient, request, serve_proxy
from tests.proxy.shadow.sides import Side
from tests.proxy.shadow.test_live_shadow import SETTLE_TIMEOUT, Served
from tests.proxy.test_cli import STARTUP, _wait_ready, club_proxy

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from pathlib import Path

    from proxy.serving.protocol import ProxyAppRunner

ROUTE = "items"
TARGET = "/api/items"
MIN_REQUESTS = 10
OUTCOMES_SQL = "SELECT outcome, n FROM club_proxy_shadow.outcomes WHERE route_id = $1"


@pytest.fixture
async def sides() -> AsyncIterator[tuple[Side, Side]]:
    """(primary, candidate) on loopback; the candidate's mode is the test's to set."""
    legacy, candidate = Side(), Side()
    await legacy.start()
    await candidate.start()
    yield legacy, candidate
    await legacy.close()
    await candidate.close()


def write_routes(tmp_path: Path, legacy: Side, candidate: Side, store: str = "") -> Path:
    """`items` on the primary, shadowed to the candidate; `store`: a `shadow_store:` line."""
    path = tmp_path / "routes.yaml"
    path.write_text(
        "version: 1\n"
        "upstreams:\n"
        f'  legacy: {{url: "{legacy.url}"}}\n'
        f'  cand: {{url: "{candidate.url}"}}\n'
        "default: legacy\n"
        "routes:\n"
        f'  - {{id: {ROUTE}, match: "GET {TARGET}", to: legacy, '
        f"shadow: {{to: cand, noise: 0, verdict: {{min_requests: {MIN_REQUESTS}}}}}}}\n" + store,
        encoding="utf-8",
    )
    return path


class Proxies:
    """Proxies served on loopback ports; whichever are still running are stopped at the end."""

    def __init__(self) -> None:
        self.running: list[ProxyAppRunner] = []

    async def start(self, routes: Path, store: ShadowStore | None = None) -> Served:
        app = create_app(routes_path=routes, reload_on_sighup=False, shadow_store=store)
        runner, port = await serve_proxy(app)
        self.running.append(runner)
        return Served(app, runner, port)

    async def stop(self, served: Served) -> None:
        """Stop one the way `club-proxy run` stops (its shadow book writes what it holds)."""
        self.running.remove(served.runner)
        await served.runner.cleanup()


@pytest.fixture
async def proxies() -> AsyncIterator[Proxies]:
    found = Proxies()
    yield found
    for runner in found.running:
        await runner.cleanup()


async def until(predicate: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll until true, or fail naming `what` after SETTLE_TIMEOUT."""
    deadline = asyncio.get_running_loop().time() + SETTLE_TIMEOUT
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"not in time: {what}")
        await asyncio.sleep(0.05)


def counted_here(served: Served) -> int:
    """The outcomes this process counted for the route (not the store's: no write)."""
    return sum(n for route, _, _, n in served.book.outcome_counts() if route == ROUTE)


async def stored_outcomes(dsn: str) -> dict[str, int]:
    """outcome -> n, as the store's table holds them (read behind the proxies' backs)."""
    conn = await asyncpg.connect(dsn)
    try:
        exists = await conn.fetchval("SELECT to_regclass('club_proxy_shadow.outcomes')")
        rows = await conn.fetch(OUTCOMES_SQL, ROUTE) if exists else []
    finally:
        await conn.close()
    return {row["outcome"]: row["n"] for row in rows}


async def send(port: int, count: int) -> None:
    """`count` client requests to the proxy on `port`: each gets the primary's 200 answer."""
    client = await RawClient.connect(port)
    try:
        for _ in range(count):
            await client.send(request("GET", TARGET))
            response = await client.read_response()
            assert response.status == 200
            assert json.loads(response.body)["path"] == TARGET
    finally:
        await client.close()


async def copies_seen(candidate: Side, count: int) -> None:
    """Wait until the candidate got `count` copies (before its mode changes)."""

    async def seen() -> bool:
        return len(candidate.seen) >= count

    await until(seen, f"{count} copies at the candidate")
    assert len(candidate.seen) == count


def _key_renamed(report: dict[str, Any], count: int) -> None:
    groups = {g["signature"]: g for g in report["differences"]}
    assert sorted(groups) == ["extra:$.items[*].ident", "missing:$.items[*].id"]
    for group in groups.values():
        assert (group["count"], group["mismatches"]) == (count, count)
        assert group["examples"][0]["target"] == TARGET


async def test_results_survive_a_proxy_restart(
    tmp_path: Path, sides: tuple[Side, Side], pg_dsn: str, proxies: Proxies
) -> None:
    legacy, candidate = sides
    routes = write_routes(tmp_path, legacy, candidate)
    # Written only when asked for a report or when the proxy stops.
    store = ShadowStore(dsn=pg_dsn, flush_interval=60.0)
    first = await proxies.start(routes, store)
    await send(first.port, 6)
    await copies_seen(candidate, 6)
    candidate.mode = "renamed"
    await send(first.port, 4)

    async def compared() -> bool:
        return counted_here(first) == 10

    await until(compared, "10 copies compared")
    assert await stored_outcomes(pg_dsn) == {}  # nothing written yet: no report was asked
    await proxies.stop(first)
    assert await stored_outcomes(pg_dsn) == {"match": 6, "mismatch": 4}

    second = await proxies.start(routes, store)
    report = await second.book.report(ROUTE, examples=True)
    assert report is not None
    assert (report["store"], report["store_ok"]) == ("postgresql", True)
    assert (report["compared"], report["matched"], report["mismatched"]) == (10, 6, 4)
    assert (report["verdict"], report["match_rate"]) == ("not_ready", 0.6)
    _key_renamed(report, 4)
    # The new proxy adds to what the old one left.
    candidate.mode = "same"
    await send(second.port, 5)
    after = await second.settled(ROUTE, 15)
    assert (after["matched"], after["mismatched"]) == (11, 4)
    assert sum(n for _, _, _, n in second.book.outcome_counts()) == 5  # its own: the new five


async def get_json(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as response:
        assert response.status == 200, await response.text()
        return await response.json()


def _accounted(report: dict[str, Any]) -> int:
    return int(report["compared"] + report["errors"] + sum(report["skipped"].values()))


async def test_two_proxy_processes_on_one_store_give_one_verdict(
    tmp_path: Path,
    sides: tuple[Side, Side],
    pg_dsn: str,
    proxies: Proxies,
    unused_tcp_port_factory: Callable[[], int],
) -> None:
    legacy, candidate = sides
    # Both replicas read the store from routes.yaml (flush every 100 ms); the
    # process is also given it on its command line, as `club-proxy run` allows.
    store = f"shadow_store: {{dsn: {json.dumps(pg_dsn)}, flush_interval: 100ms}}\n"
    routes = write_routes(tmp_path, legacy, candidate, store)
    here = await proxies.start(routes)
    port, admin_port = unused_tcp_port_factory(), unused_tcp_port_factory()
    args = ("--port", str(port), "--admin-port", str(admin_port))
    admin = f"http://127.0.0.1:{admin_port}"
    limit = aiohttp.ClientTimeout(total=STARTUP)
    async with (
        club_proxy(routes, *args, "--shadow-dsn", pg_dsn, "--no-access-log"),
        aiohttp.ClientSession(timeout=limit) as session,
    ):
        await _wait_ready(session, f"{admin}/-/ready")
        # Matching copies through both, then copies with a key renamed through both.
        await send(here.port, 6)
        await send(port, 3)
        await copies_seen(candidate, 9)
        candidate.mode = "renamed"
        await send(here.port, 1)
        await send(port, 2)

        reports: dict[str, Any] = {}

        async def both_settled() -> bool:
            reports["here"] = await here.book.report(ROUTE, examples=True)
            reports["there"] = await get_json(session, f"{admin}/-/shadow/{ROUTE}")
            return all(_accounted(r) == 12 for r in reports.values())

        await until(both_settled, "both replicas report 12 requests")
        # Each asked again once both had written: one store, one answer.
        mine = json.loads(json.dumps(await here.book.report(ROUTE, examples=True)))
        theirs = await get_json(session, f"{admin}/-/shadow/{ROUTE}")
        assert mine == theirs
        assert (mine["compared"], mine["matched"], mine["mismatched"]) == (12, 9, 3)
        assert (mine["verdict"], mine["match_rate"], mine["store_ok"]) == ("not_ready", 0.75, True)
        _key_renamed(mine, 3)
        # Each process still counts only its own requests (its metrics).
        assert sorted(here.book.outcome_counts()) == [
            (ROUTE, "match", "", 6),
            (ROUTE, "mismatch", "", 1),
        ]
        # `club-proxy shadow status` against the process: the same verdict.
        out = io.StringIO()
        status = await asyncio.to_thread(
            main_with_output, ["shadow", "status", "--admin", admin], out
        )
        assert status == 0
        line = next(row for row in out.getvalue().splitlines() if row.startswith(f"{ROUTE} "))
        assert line.split()[-1] == "not_ready"
        assert "results: postgresql" in out.getvalue()


def main_with_output(argv: list[str], out: io.StringIO) -> int:
    """`club-proxy ...` in this process, its standard output into `out`."""
    with contextlib.redirect_stdout(out):
        return main(argv)


class Relay:
    """A TCP relay on loopback to PostgreSQL: the store's only way to the database.

    `cut()` closes the listening socket and aborts every relayed connection
    (the server is gone: connections refused); `restore()` listens again on the
    same port.
    """

    def __init__(self, dsn: str) -> None:
        parts = urlsplit(dsn)
        query = dict(parse_qsl(parts.query))
        host = query.pop("host", None) or parts.hostname or "localhost"
        port = int(query.pop("port", None) or parts.port or 5432)
        self._unix = f"{host}/.s.PGSQL.{port}" if host.startswith("/") else None
        self._target = (host, port)
        self._rest = (parts, query)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    @property
    def listening(self) -> bool:
        return self._server is not None

    @property
    def dsn(self) -> str:
        """The database's DSN through this relay."""
        parts, query = self._rest
        user = parts.netloc.rpartition("@")[0]
        netloc = f"{user}@127.0.0.1:{self.port}" if user else f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query)))

    async def restore(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        server, self._server = self._server, None
        assert server is not None
        server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if self._unix is not None:
                up_reader, up_writer = await asyncio.open_unix_connection(self._unix)
            else:
                up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            for end in (writer, up_writer):
                self._writers.discard(end)
                end.transport.abort()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.transport.abort()


@pytest.fixture
async def relay(pg_dsn: str) -> AsyncIterator[Relay]:
    found = Relay(pg_dsn)
    await found.restore()
    yield found
    if found.listening:
        await found.cut()


async def test_the_store_going_away_mid_run_loses_no_request_and_no_count(  # noqa: PLR0917 (fixtures)
    tmp_path: Path,
    sides: tuple[Side, Side],
    pg_dsn: str,
    relay: Relay,
    proxies: Proxies,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="proxy.shadow")
    legacy, candidate = sides
    routes = write_routes(tmp_path, legacy, candidate)
    served = await proxies.start(routes, ShadowStore(dsn=relay.dsn, flush_interval=0.05))
    await send(served.port, 6)
    before = await served.settled(ROUTE, 6)
    assert (before["matched"], before["store_ok"]) == (6, True)
    assert await stored_outcomes(pg_dsn) == {"match": 6}

    await relay.cut()  # PostgreSQL is gone for the proxy, mid-run
    await copies_seen(candidate, 6)
    candidate.mode = "renamed"
    await send(served.port, 8)  # every client request still answered

    async def compared() -> bool:
        return counted_here(served) == 14

    await until(compared, "the copies made during the outage compared")
    down = await served.book.report(ROUTE, examples=True)
    assert down is not None
    # This process's own counts, said to be so.
    assert (down["store_ok"], down["matched"], down["mismatched"]) == (False, 6, 8)
    _key_renamed(down, 8)
    assert await stored_outcomes(pg_dsn) == {"match": 6}  # nothing got through

    await relay.restore()
    await copies_seen(candidate, 14)
    candidate.mode = "same"
    await send(served.port, 4)

    async def written() -> bool:  # by the proxy's own writer, no report asked
        return await stored_outcomes(pg_dsn) == {"match": 10, "mismatch": 8}

    await until(written, "the counts of the outage written once the store is back")
    back = await served.book.report(ROUTE, examples=True)
    assert back is not None
    assert (back["store_ok"], back["compared"], back["matched"], back["mismatched"]) == (
        True,
        18,
        10,
        8,
    )
    assert (back["verdict"], back["errors"], back["skipped"]) == ("not_ready", 0, {})
    _key_renamed(back, 8)  # the examples taken during the outage too
    assert caplog.messages.count("proxy.shadow.store_unavailable") == 1
    assert caplog.messages.count("proxy.shadow.store_back") == 1
