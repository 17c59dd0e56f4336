"""`club-proxy run --workers 2` as a real process: a worker that dies is replaced.

The master's and the workers' JSON log lines (stderr) say which worker listens
with which pid, and which one died; the test kills only the worker processes
its own `club-proxy run` started, by the pids they logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest

from tests.proxy import forward_support

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from tests.proxy.echo_upstream import EchoUpstream

STARTUP = 30.0
ROUTES = (
    "version: 1\n"
    'upstreams: {{legacy: {{url: "{url}"}}}}\n'
    "default: legacy\n"
    'routes: [{{id: orders, match: "GET /api/orders/{{id}}", to: legacy}}]\n'
)


upstream = forward_support.upstream


class Run:
    """A `club-proxy run --workers 2` process and the log lines it has written."""

    def __init__(self, process: asyncio.subprocess.Process, port: int) -> None:
        self.process = process
        self.port = port
        self.lines: list[dict[str, Any]] = []
        self._returned: set[int] = set()

    async def next_event(self, event: str, **fields: object) -> dict[str, Any]:
        """The first log line with `event` and `fields` not returned before.

        Lines of different workers come in any order: earlier lines are kept
        and searched first.
        """
        assert self.process.stderr is not None
        while True:
            for line in self.lines:
                if id(line) in self._returned:
                    continue
                if line.get("event") == event and all(line.get(k) == v for k, v in fields.items()):
                    self._returned.add(id(line))
                    return line
            raw = await asyncio.wait_for(self.process.stderr.readline(), STARTUP)
            assert raw, f"the proxy exited; its log: {self.lines}"
            try:
                self.lines.append(json.loads(raw))
            except ValueError:
                continue  # not one of ours (a traceback of a worker that died)

    async def both_listening(self) -> dict[str, Any]:
        """Wait until workers 0 and 1 listen; worker 0's line."""
        first = await self.next_event("proxy.listening", worker=0)
        await self.next_event("proxy.listening", worker=1)
        return first

    async def stop(self) -> None:
        """SIGTERM the master; it must exit 0 (its log is in the failure message)."""
        self.process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.process.wait(), STARTUP)
        assert self.process.stderr is not None
        assert code == 0, f"its log: {self.lines}, then {await self.process.stderr.read()!r}"

    async def get_ok(self, session: aiohttp.ClientSession, count: int) -> None:
        for _ in range(count):
            async with session.get(f"http://127.0.0.1:{self.port}/api/orders/1") as response:
                assert response.status == 200


@contextlib.asynccontextmanager
async def club_proxy_run(
    tmp_path: Path, upstream: EchoUpstream, port: int, admin_port: int = 0
) -> AsyncIterator[Run]:
    routes = tmp_path / "routes.yaml"
    routes.write_text(ROUTES.format(url=upstream.url), encoding="utf-8")
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "proxy", "run", "--routes", str(routes), "--port", str(port)),
        *("--admin-port", str(admin_port), "--workers", "2", "--no-access-log"),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    started = Run(process, port)
    try:
        yield started
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(process.wait(), STARTUP)


@pytest.fixture
async def run(
    tmp_path: Path, upstream: EchoUpstream, unused_tcp_port_factory: Any
) -> AsyncIterator[Run]:
    async with club_proxy_run(tmp_path, upstream, unused_tcp_port_factory()) as started:
        yield started


async def test_a_killed_worker_is_replaced_and_the_master_still_stops_cleanly(run: Run) -> None:
    first = await run.both_listening()
    os.kill(first["pid"], signal.SIGKILL)
    died = await run.next_event("proxy.worker_died", worker=0)
    assert (died["pid"], died["exit_code"]) == (first["pid"], -signal.SIGKILL)
    assert (died["had_started"], died["respawn_in_s"]) == (True, 0.0)  # at once
    second = await run.next_event("proxy.listening", worker=0)
    assert second["pid"] != first["pid"]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=STARTUP)) as session:
        await run.get_ok(session, 20)
    await run.stop()


async def test_a_worker_that_cannot_start_is_retried_until_it_can(
    run: Run, tmp_path: Path, upstream: EchoUpstream
) -> None:
    first = await run.both_listening()
    routes = tmp_path / "routes.yaml"
    # Running workers keep their table; a new one cannot load this file.
    routes.write_text("version: 1\nroutes: nope\n", encoding="utf-8")
    os.kill(first["pid"], signal.SIGKILL)
    await run.next_event("proxy.worker_died", worker=0, had_started=True, respawn_in_s=0.0)
    quick = await run.next_event("proxy.worker_died", worker=0)
    again = await run.next_event("proxy.worker_died", worker=0)
    assert 0 < quick["respawn_in_s"] < again["respawn_in_s"]  # backing off, not spinning
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=STARTUP)) as session:
        await run.get_ok(session, 10)  # worker 1 serves meanwhile
        routes.write_text(ROUTES.format(url=upstream.url), encoding="utf-8")
        back = await run.next_event("proxy.listening", worker=0)
        assert back["pid"] != first["pid"]
        await run.get_ok(session, 10)


async def test_a_stop_signal_while_a_worker_starts_drains_it(run: Run) -> None:
    first = await run.both_listening()
    os.kill(first["pid"], signal.SIGKILL)
    await run.next_event("proxy.worker_died", worker=0)
    # The replacement is starting (importing, binding) when the stop comes.
    await run.stop()


async def test_a_worker_that_cannot_start_at_all_stops_the_master(
    tmp_path: Path, upstream: EchoUpstream, unused_tcp_port_factory: Any
) -> None:
    # Worker 1's admin port (admin + 1) is taken: it cannot start, and nothing
    # has served in its slot yet, so the whole run fails as one process would.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        admin = taken.getsockname()[1] - 1
        async with club_proxy_run(tmp_path, upstream, unused_tcp_port_factory(), admin) as run:
            # Worker 1 (or worker 0, should admin itself be taken by chance).
            failed = await run.next_event("proxy.worker_start_failed")
            assert failed["had_started"] is False
            assert await asyncio.wait_for(run.process.wait(), STARTUP) == 1
