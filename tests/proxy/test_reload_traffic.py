"""Live reload under traffic, served as `club-proxy run` serves it (`ProxyAppRunner`).

Clients loop bodiless GETs and POSTs through both request paths at once: some
connections stay in the fast lane, others are handed to aiohttp's path by a
first request with a body (for good, tests/proxy/test_fastlane.py). Every
answer says which upstream sent it (the echo's port), and routes.yaml is laid
out so a half-written file is told apart from both the old and the new table:
its last route sends `/last` to `other`, so any valid prefix sends `/last` to
the default, `legacy`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

from proxy.serving.app import PROXY, create_app
from tests.proxy import forward_support
from tests.proxy.forward_support import TIMEOUT, RawClient, request, serve_proxy

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from aiohttp import web

    from proxy.core.state import Proxy
    from tests.proxy.echo_upstream import EchoUpstream

POLL = 0.02
PADDING = 12  # routes between `moved` and `last`: a byte-by-byte write spans many polls
PATHS = ("/moved", "/last", "/else")
AFTER = 6  # answers each client gets on a phase's final table (every method and path)
_HANDOFFS = re.compile(
    rb'^club_proxy_fast_lane_handoffs_total\{reason="([^"]+)"\} (\S+)$', re.MULTILINE
)


# Two distinct echo upstreams, from the one fixture function.
legacy = forward_support.upstream
other = forward_support.upstream


def routes_bytes(
    legacy: EchoUpstream,
    other: EchoUpstream,
    *,
    moved_to: str,
    pads_to: str = "legacy",
    tail: str = "",
) -> bytes:
    pads = "".join(
        f'  - {{id: pad{n}, match: "/pad/{n}", to: {pads_to}}}\n' for n in range(PADDING)
    )
    return (
        "version: 1\n"
        f'upstreams: {{legacy: {{url: "{legacy.url}"}}, other: {{url: "{other.url}"}}}}\n'
        "default: legacy\n"
        "routes:\n"
        f'  - {{id: moved, match: "/moved", to: {moved_to}}}\n'
        f"{pads}"
        '  - {id: last, match: "/last", to: other}\n'
        f"{tail}"
    ).encode()


def routing(moved_to: str) -> dict[str, str]:
    """The upstream of each probed path under `routes_bytes(moved_to=...)` (no prefix of it)."""
    return {"/moved": moved_to, "/last": "other", "/else": "legacy"}


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def wait_until(predicate: Callable[[], bool]) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), TIMEOUT)


@dataclass(frozen=True, slots=True)
class Phase:
    name: str
    moved_from: str
    moved_to: str
    final_digest: str

    def allows(self, answer: Answer) -> bool:
        """Answered in full by the old or the new table's upstream; the new one once final."""
        new = routing(self.moved_to)[answer.path]
        upstreams = {new} if answer.final else {new, routing(self.moved_from)[answer.path]}
        return (answer.status, answer.complete) == (200, True) and answer.upstream in upstreams


@dataclass(frozen=True, slots=True)
class Answer:
    client: int
    lane: bool  # the client's connection stays in the fast lane (else aiohttp's path)
    phase: Phase
    method: str
    path: str
    final: bool  # the phase's final table was active when the request was sent
    status: int  # 0: no answer
    complete: bool
    upstream: str | None


class Traffic:
    """Clients looping requests through one proxy while the test edits its routes."""

    def __init__(self, proxy: Proxy, names: dict[int, str]) -> None:
        self.proxy = proxy
        self.names = names  # upstream port -> name
        self.answers: list[Answer] = []
        self.phase = Phase("start", "legacy", "legacy", proxy.watcher.table.digest)
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, port: int, *, lanes: int, handed_off: int) -> None:
        for n in range(lanes + handed_off):
            client = await RawClient.connect(port)
            task = asyncio.create_task(self._loop(n, client, lane=n < lanes))
            self._tasks.append(task)

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    def enter(self, phase: Phase) -> None:
        self.phase = phase

    async def settle(self, done: Callable[[], bool]) -> None:
        """Until `done()`, then until every client has AFTER more answers (or one failed)."""
        await wait_until(done)
        seen = [self._count(n) for n in range(len(self._tasks))]
        await wait_until(
            lambda: (
                any(a.status == 0 for a in self.answers)
                or all(self._count(n) >= seen[n] + AFTER for n in range(len(seen)))
            )
        )

    def _count(self, client: int) -> int:
        return sum(1 for a in self.answers if a.client == client)

    async def _loop(self, n: int, client: RawClient, *, lane: bool) -> None:
        try:
            if not lane:
                # A body hands this connection to aiohttp's path for good.
                await self._exchange(n, client, lane=lane, method="POST", path="/else", body=b"x")
            i = 0
            while not self._stop.is_set():
                method = ("GET", "POST")[i % 2]
                if not await self._exchange(n, client, lane=lane, method=method, path=PATHS[i % 3]):
                    return
                i += 1
        finally:
            await client.close()

    async def _exchange(
        self, n: int, client: RawClient, *, lane: bool, method: str, path: str, body: bytes = b""
    ) -> bool:
        phase = self.phase
        final = self.proxy.watcher.table.digest == phase.final_digest
        status, complete, upstream = 0, False, None
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, TimeoutError):
            await client.send(request(method, path, body=body))
            response = await client.read_response()
            status, complete = response.status, response.complete
            with contextlib.suppress(ValueError, KeyError):
                upstream = self.names.get(json.loads(response.body)["port"])
        answer = Answer(n, lane, phase, method, path, final, status, complete, upstream)
        self.answers.append(answer)
        return status != 0


def handoffs(app: web.Application) -> dict[str, float]:
    text = app[PROXY].metrics.render()
    return {m[1].decode(): float(m[2]) for m in _HANDOFFS.finditer(text)}


async def write_byte_by_byte(path: Path, data: bytes) -> None:
    with path.open("wb", buffering=0) as file:
        for i in range(len(data)):
            file.write(data[i : i + 1])
            await asyncio.sleep(0.001)


async def test_reload_under_traffic_on_both_paths_loses_no_request_and_applies_whole_files(
    tmp_path: Path, legacy: EchoUpstream, other: EchoUpstream
) -> None:
    path = tmp_path / "routes.yaml"
    path.write_bytes(routes_bytes(legacy, other, moved_to="legacy"))
    app = create_app(routes_path=path, poll_interval=POLL, reload_on_sighup=False)
    runner, port = await serve_proxy(app)
    watcher = app[PROXY].watcher
    applied: list[str] = []
    watcher.add_listener(lambda _old, new: applied.append(new.digest))
    traffic = Traffic(app[PROXY], {legacy.port: "legacy", other.port: "other"})
    edited = routes_bytes(legacy, other, moved_to="other")
    renamed = routes_bytes(legacy, other, moved_to="legacy")
    invalid = routes_bytes(
        legacy, other, moved_to="other", tail='  - {id: moved, match: "/x", to: other}\n'
    )
    written = routes_bytes(legacy, other, moved_to="other", pads_to="other")  # not `edited`
    try:
        await traffic.start(port, lanes=2, handed_off=2)
        await traffic.settle(lambda: True)  # every client busy on the start table

        # 1. A valid edit in place: /moved goes to other.
        traffic.enter(Phase("edit", "legacy", "other", digest(edited)))
        path.write_bytes(edited)
        await traffic.settle(lambda: watcher.table.digest == digest(edited))

        # 2. A finished file renamed into place: /moved back to legacy.
        traffic.enter(Phase("rename", "other", "legacy", digest(renamed)))
        staged = path.with_name(".routes.yaml.tmp")
        staged.write_bytes(renamed)
        staged.replace(path)  # rename(2), as os.replace
        await traffic.settle(lambda: watcher.table.digest == digest(renamed))

        # 3. An invalid edit (it would move /moved to other): refused, the table stays.
        traffic.enter(Phase("invalid", "legacy", "legacy", digest(renamed)))
        path.write_bytes(invalid)
        await traffic.settle(lambda: watcher.reload_failures == 1)
        assert "duplicate route id 'moved'" in (watcher.last_result.error or "")
        metrics = app[PROXY].metrics.render().decode()
        assert 'club_proxy_route_reloads_total{result="failure"} 1.0' in metrics

        # 4. A write byte by byte, the watcher polling all along: /moved to other.
        traffic.enter(Phase("bytes", "legacy", "other", digest(written)))
        polls = watcher._polls
        await write_byte_by_byte(path, written)
        assert watcher._polls - polls >= 20  # it really looked at many partial states
        await traffic.settle(lambda: watcher.table.digest == digest(written))
    finally:
        await traffic.stop()
        await runner.cleanup()

    wrong = [a for a in traffic.answers if not a.phase.allows(a)]
    assert wrong == []
    for name in ("start", "edit", "rename", "invalid", "bytes"):
        # Every phase had traffic on both paths, bodiless GETs and POSTs alike.
        seen = {(a.lane, a.method) for a in traffic.answers if a.phase.name == name}
        assert seen == {(True, "GET"), (True, "POST"), (False, "GET"), (False, "POST")}, name
    assert applied == [digest(edited), digest(renamed), digest(written)]
    assert watcher.reload_failures == 1
    # The lane relayed exactly the lane clients' requests; the others left it once each.
    assert app[PROXY].metrics.fast_lane_requests == sum(a.lane for a in traffic.answers)
    assert handoffs(app) == {"body": 2.0}


def hold_routes(legacy: EchoUpstream, other_url: str | None) -> str:
    """`/hold` and `/after` to `other` at `other_url`; with None, no `other` (legacy answers)."""
    if other_url is None:
        return f'version: 1\nupstreams: {{legacy: {{url: "{legacy.url}"}}}}\ndefault: legacy\n'
    return (
        "version: 1\n"
        f'upstreams: {{legacy: {{url: "{legacy.url}"}}, other: {{url: "{other_url}"}}}}\n'
        "default: legacy\n"
        "routes:\n"
        '  - {id: hold, match: "GET /hold", to: other}\n'
        '  - {id: after, match: "GET /after", to: other}\n'
    )


third = forward_support.upstream  # a third distinct echo upstream


@pytest.mark.parametrize(
    "case",
    [
        pytest.param((lane, edit), id=f"{'fast-lane' if lane else 'aiohttp-path'}-{edit}")
        for lane in (True, False)
        for edit in ("removed", "moved")
    ],
)
async def test_a_request_in_flight_finishes_on_the_upstream_a_reload_removes_or_moves(
    tmp_path: Path,
    legacy: EchoUpstream,
    other: EchoUpstream,
    third: EchoUpstream,
    case: tuple[bool, str],
) -> None:
    lane, edit = case  # which request path; `other` removed or moved to `third`
    path = tmp_path / "routes.yaml"
    path.write_text(hold_routes(legacy, other.url), encoding="utf-8")
    app = create_app(routes_path=path, poll_interval=3600, reload_on_sighup=False)
    proxy = app[PROXY]
    runner, port = await serve_proxy(app)
    client = await RawClient.connect(port)
    try:
        if not lane:
            await client.send(request("POST", "/else", body=b"x"))  # to aiohttp's path
            assert (await client.read_response()).status == 200
        # `other` answers the head and "first", then holds the rest.
        await client.send(request("GET", "/hold"))
        await wait_until(lambda: any(r.target == b"/hold" for r in other.received))
        old_pool = proxy.pools.current["other"]
        path.write_text(hold_routes(legacy, third.url if edit == "moved" else None), "utf-8")
        assert proxy.watcher.reload().changed
        assert old_pool.retired
        assert proxy.pools.current.get("other") is not old_pool

        other.release.set()
        response = await client.read_response()
        assert (response.status, response.body, response.complete) == (200, b"firstlast", True)
        # The retired pool closes its connection once that request is done...
        await wait_until(lambda: other.closed == other.accepted)
        # ...and the next request on the same connection follows the new table.
        await client.send(request("GET", "/after"))
        after = json.loads((await client.read_response()).body)["port"]
        assert after == (third.port if edit == "moved" else legacy.port)
        assert proxy.metrics.fast_lane_requests == (2 if lane else 0)
    finally:
        await client.close()
        await runner.cleanup()
