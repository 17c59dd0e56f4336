"""Live shadow through the proxy: real sockets, both request paths, real sides.

Each test serves the proxy the way `club-proxy run` does (`ProxyAppRunner`,
fast lane on or off), a primary and a candidate on loopback (`sides.Side`),
sends real requests and reads what the shadow recorded (`ShadowBook.report`,
the same object `/-/shadow` answers from).
"""

from __future__ import annotations

import asyncio
import gc
import json
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest

from proxy.core.state import PROXY
from proxy.fastlane.call import LaneCall
from proxy.serving.app import ShadowLimits, create_app
from proxy.shadow.tap import PrimaryTap
from proxy.webpath.dispatch import _Call
from tests.proxy.forward_support import RawClient, request, serve_proxy
from tests.proxy.shadow.sides import BIG, Side

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from aiohttp import web

    from proxy.serving.protocol import ProxyAppRunner

SETTLE_TIMEOUT = 15.0
paths = pytest.mark.parametrize("fast_lane", [True, False], ids=["fast-lane", "aiohttp-path"])


@pytest.fixture
async def legacy() -> AsyncIterator[Side]:
    side = await Side().start()
    yield side
    await side.close()


@pytest.fixture
async def candidate() -> AsyncIterator[Side]:
    side = await Side().start()
    yield side
    await side.close()


def write_routes(
    tmp_path: Path, legacy: Side, candidate: Side, shadow: str, extra: str = ""
) -> Path:
    path = tmp_path / "routes.yaml"
    path.write_text(
        "version: 1\n"
        "upstreams:\n"
        f'  legacy: {{url: "{legacy.url}"}}\n'
        f'  cand: {{url: "{candidate.url}"}}\n'
        f'  mirror: {{url: "{legacy.url}"}}\n'
        '  down: {url: "http://127.0.0.1:1", connect_timeout: 1s}\n'
        'new: {app: "tests.proxy.newapp_sample:create_app"}\n'
        "default: legacy\n"
        "routes:\n"
        f'  - {{id: items, match: "GET,POST /api/items", to: legacy, shadow: {shadow}}}\n'
        '  - {id: plain, match: "GET /api/plain", to: legacy}\n' + extra,
        encoding="utf-8",
    )
    return path


class Served:
    """The proxy app on a port, and its shadow results."""

    def __init__(self, app: web.Application, runner: ProxyAppRunner, port: int) -> None:
        self.app, self.runner, self.port = app, runner, port

    @property
    def book(self) -> Any:
        shadow = self.app[PROXY].shadow
        assert shadow is not None
        return shadow.book

    async def get_all(self, targets: list[str], method: str = "GET") -> list[tuple[int, bytes]]:
        """Send each on one keep-alive connection; (status, body) of each."""
        client = await RawClient.connect(self.port)
        answers = []
        try:
            for target in targets:
                await client.send(
                    request(method, target, headers=[("Authorization", "Bearer t-1")])
                )
                response = await client.read_response(head=method == "HEAD")
                answers.append((response.status, response.body))
        finally:
            await client.close()
        return answers

    async def settled(self, route_id: str, total: int) -> dict[str, Any]:
        """The route's report once `total` requests are accounted for (any outcome)."""
        deadline = asyncio.get_running_loop().time() + SETTLE_TIMEOUT
        while True:
            report = await self.book.report(route_id, examples=True)
            done = 0 if report is None else _accounted(report)
            if done >= total or asyncio.get_running_loop().time() > deadline:
                assert report is not None, f"nothing recorded for {route_id}"
                assert done == total, report
                return dict(report)
            await asyncio.sleep(0.05)


def _accounted(report: dict[str, Any]) -> int:
    return int(report["compared"] + report["errors"] + sum(report["skipped"].values()))


@pytest.fixture
async def serve() -> AsyncIterator[Any]:
    started: list[ProxyAppRunner] = []

    async def start(routes: Path, *, fast_lane: bool, limits: ShadowLimits | None = None) -> Served:
        app = create_app(
            routes_path=routes, reload_on_sighup=False, fast_lane=fast_lane, shadow=limits
        )
        runner, port = await serve_proxy(app)
        started.append(runner)
        return Served(app, runner, port)

    yield start
    for runner in started:
        await runner.cleanup()


async def _direct(side: Side, target: str) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as session, session.get(side.url + target) as response:
        return response.status, await response.read()


@paths
async def test_copies_are_sent_marked_and_matched(
    tmp_path: Path, legacy: Side, candidate: Side, serve: Any, fast_lane: bool
) -> None:
    routes = write_routes(
        tmp_path, legacy, candidate, "{to: cand, noise: 0, verdict: {min_requests: 20}}"
    )
    served = await serve(routes, fast_lane=fast_lane)
    answers = await served.get_all([f"/api/items?n={n}" for n in range(20)])
    assert answers == [await _direct(legacy, f"/api/items?n={n}") for n in range(20)]
    report = await served.settled("items", 20)
    assert (report["compared"], report["matched"], report["mismatched"]) == (20, 20, 0)
    assert (report["match_rate"], report["verdict"], report["shadow_to"]) == (1.0, "ready", "cand")
    assert sorted(path for _, path, _ in candidate.seen) == sorted(
        f"/api/items?n={n}" for n in range(20)
    )
    for _, _, headers in candidate.seen:
        assert headers["X-Club-Shadow"] == "1"
        assert headers["Authorization"] == "Bearer t-1"  # the original request's headers
        assert headers["Host"] == "proxy.test"
        assert "X-Request-ID" in headers
    # The primary never sees the marker: it got the client's requests only.
    assert all("X-Club-Shadow" not in headers for _, _, headers in legacy.seen)
    shadow = served.app[PROXY].shadow
    assert shadow is not None
    assert shadow.buffers.used == 0  # every copied body given back


@paths
async def test_a_chunked_primary_is_copied_piece_by_piece(
    tmp_path: Path, legacy: Side, candidate: Side, serve: Any, fast_lane: bool
) -> None:
    legacy.mode = "chunked"
    routes = write_routes(
        tmp_path, legacy, candidate, "{to: cand, noise: 0, ignore: {headers: [content-type]}}"
    )
    served = await serve(routes, fast_lane=fast_lane)
    answers = await served.get_all(["/api/items"] * 5)
    assert answers == [await _direct(candidate, "/api/items")] * 5
    report = await served.settled("items", 5)
    assert (report["matched"], report["mismatched"]) == (5, 0), report


@paths
@pytest.mark.parametrize("method", ["HEAD", "OPTIONS"])
async def test_head_and_options_are_shadowed(  # noqa: PLR0917 (fixtures)
    tmp_path: Path, legacy: Side, candidate: Side, serve: Any, fast_lane: bool, method: str
) -> None:
    routes = write_routes(tmp_path, legacy, candidate, "{to: cand, noise: 0}")
    routes.write_text(
        routes.read_text().replace("GET,POST /api/items", "GET,HEAD,OPTIONS,POST /api/items")
    )
    served = await serve(routes, fast_lane=fast_lane)
    answers = await served.get_all(["/api/items"] * 3, method=method)
    assert [status for status, _ in answers] == [200] * 3
    report = await served.settled("items", 3)
    assert report["matched"] == 3, report
    assert [m for m, _, _ in candidate.seen] == [method] * 3


@paths
async def test_a_renamed_key_is_flagged_at_its_path(
    tmp_path: Path, legacy: Side, candidate: Side, serve: Any, fast_lane: bool
) -> None:
    candidate.mode = "renamed"
    routes = write_routes(
        tmp_path, legacy, candidate, "{to: cand, noise: 0, verdict: {min_requests: 5}}"
    )
    served = await serve(routes, fast_lane=fast_lane)
    await served.get_all(["/api/items"] * 5)
    report = await served.settled("items", 5)
    assert (report["mismatched"], report["verdict"]) == (5, "not_ready")
    groups = {group["signature"]: group for group in report["differences"]}
    assert groups["missing:$.items[*].id"]["count"] == 5
    assert groups["extra:$.items[*].ident"]["count"] == 5
    assert "$.items[*].id" in report["verdict_reason"] or "ident" in report["verdict_reason"]
    example = groups["missing:$.items[*].id"]["examples"][0]
    assert example["target"] == "/api/items"
    # Secrets never reach a stored example.
    headers = {k.lower(): v for k, v in example["request_headers"]}
    assert "t-1" not in headers["authorization"]


@paths
@pytest.mark.parametrize(
    ("mode", "outcome"),
    [
        ("sleep", ("errors", "timeout")),
        ("500", ("mismatched", None)),
        ("reset", ("errors", "candidate_error")),
        ("endless", ("skipped", "body_too_large")),
    ],
)
async def test_a_failing_candidate_never_touches_the_client_answer(  # noqa: PLR0917 (fixtures)
    tmp_path: Path,
    legacy: Side,
    candidate: Side,
    serve: Any,
    fast_lane: bool,
    mode: str,
    outcome: tuple[str, str | None],
) -> None:
    candidate.mode = mode
    shadow = "{to: cand, noise: 0, timeout: 300ms, max_body: 64KiB}"
    served = await serve(write_routes(tmp_path, legacy, candidate, shadow), fast_lane=fast_lane)
    loop = asyncio.get_running_loop()
    started = loop.time()
    answers = await served.get_all(["/api/items"] * 5)
    # The client never waits for the candidate (which sleeps 10 s in one case).
    assert loop.time() - started < 5.0
    assert answers == [await _direct(legacy, "/api/items")] * 5
    report = await served.settled("items", 5)
    key, reason = outcome
    if reason is None:
        assert report[key] == 5
    else:
        counts = report["error_reasons"] if key == "errors" else report["skipped"]
        assert counts.get(reason) == 5, report


@paths
async def test_a_big_primary_body_is_relayed_whole_and_not_compared(
    tmp_path: Path, legacy: Side, candidate: Side, serve: Any, fast_lane: bool
) -> None:
    extra = (
        '  - {id: big, match: "GET /api/big", to: legacy, shadow: {to: cand, max_body: 64KiB}}\n'
    )
    served = await serve(
        write_routes(tmp_path, legacy, candidate, "{to: cand}", extra), fast_lane=fast_lane
    )
    answers = await served.get_all(["/api/big"] * 3)
    assert answers == [(200, BIG)] * 3
    report = await served.settled("big", 3)
    assert report["skipped"] == {"body_too_large": 3}


@paths
async def test_the_bytes_held_for_copies_are_bounded(
    tmp_path: Path, legacy: Side, candidate: Side, serve: Any, fast_lane: bool
) -> None:
    extra = '  - {id: big, match: "GET /api/big", to: legacy, shadow: {to: cand, noise: 0}}\n'
    routes = write_routes(tmp_path, legacy, candidate, "{to: cand}", extra)
    served = await serve(routes, fast_lane=fast_lane, limits=ShadowLimits(max_buffered=256 * 1024))
    answers = await served.get_all(["/api/big"] * 3)
    assert answers == [(200, BIG)] * 3
    # 300 KiB each, within max_body (1 MiB) but over the process's 256 KiB for copies.
    report = await served.settled("big", 3)
    assert report["skipped"] == {"queue_full": 3}
    shadow = served.app[PROXY].shadow
    assert shadow is not None
    assert shadow.buffers.used == 0


@paths
async def test_every_request_not_compared_is_counted_with_its_reason(
    tmp_path: Path, legacy: Side, candidate: Side, serve: Any, fast_lane: bool
) -> None:
    extra = (
        '  - {id: none, match: "GET /api/none", to: legacy, shadow: {to: cand, sample: 0}}\n'
        '  - {id: broken, match: "GET /api/broken", to: down, shadow: {to: cand}}\n'
    )
    served = await serve(
        write_routes(tmp_path, legacy, candidate, "{to: cand}", extra), fast_lane=fast_lane
    )
    posted = await served.get_all(["/api/items"] * 3, method="POST")
    assert [status for status, _ in posted] == [200] * 3
    assert (await served.settled("items", 3))["skipped"] == {"unsafe_method": 3}
    await served.get_all(["/api/none"] * 4)
    assert (await served.settled("none", 4))["skipped"] == {"sampled_out": 4}
    broken = await served.get_all(["/api/broken"] * 2)
    assert [status for status, _ in broken] == [502, 502]
    assert (await served.settled("broken", 2))["skipped"] == {"primary_error": 2}
    await served.get_all(["/api/plain"] * 3)
    # Unshadowed routes are neither copied nor counted.
    assert candidate.seen == []
    assert [route["id"] for route in (await served.book.report())["routes"]] == [
        "items",
        "none",
        "broken",
    ]


@paths
async def test_a_full_queue_drops_copies_and_counts_them(
    tmp_path: Path, legacy: Side, candidate: Side, serve: Any, fast_lane: bool
) -> None:
    candidate.mode = "sleep"
    routes = write_routes(tmp_path, legacy, candidate, "{to: cand, noise: 0, timeout: 1s}")
    served = await serve(routes, fast_lane=fast_lane, limits=ShadowLimits(queue_size=1, workers=1))
    answers = await served.get_all(["/api/items"] * 10)
    assert [status for status, _ in answers] == [200] * 10
    report = await served.settled("items", 10)
    # One copy in flight, one waiting; the other eight found the queue full.
    assert report["skipped"] == {"queue_full": 8}
    assert report["error_reasons"] == {"timeout": 2}


@paths
async def test_a_failing_candidate_is_paused_and_other_routes_go_on(
    tmp_path: Path, legacy: Side, candidate: Side, serve: Any, fast_lane: bool
) -> None:
    candidate.mode = "reset"
    extra = '  - {id: other, match: "GET /api/other", to: legacy, shadow: {to: mirror, noise: 0}}\n'
    routes = write_routes(tmp_path, legacy, candidate, "{to: cand, noise: 0}", extra)
    served = await serve(routes, fast_lane=fast_lane)
    await served.get_all(["/api/items"] * 5)
    assert (await served.settled("items", 5))["error_reasons"] == {"candidate_error": 5}
    # Five failures in a row: the route's copies pause (no request reaches the candidate).
    seen = len(candidate.seen)
    await served.get_all(["/api/items"] * 7)
    report = await served.settled("items", 12)
    assert report["error_reasons"] == {"candidate_error": 5, "candidate_down": 7}
    assert len(candidate.seen) == seen
    # Another route's copies are not held up by it.
    await served.get_all(["/api/other"] * 5)
    assert (await served.settled("other", 5))["matched"] == 5


@paths
async def test_copies_per_second_are_capped(
    tmp_path: Path, legacy: Side, candidate: Side, serve: Any, fast_lane: bool
) -> None:
    routes = write_routes(tmp_path, legacy, candidate, "{to: cand, noise: 0}")
    served = await serve(routes, fast_lane=fast_lane, limits=ShadowLimits(rate=5))
    answers = await served.get_all(["/api/items"] * 30)
    assert [status for status, _ in answers] == [200] * 30
    report = await served.settled("items", 30)
    # A burst of one second's worth (5), then about 5 per second.
    assert 5 <= report["matched"] <= 8, report
    assert report["skipped"] == {"rate_limited": 30 - report["matched"]}


@paths
async def test_noise_learned_from_the_primary_is_not_a_mismatch(
    tmp_path: Path, legacy: Side, candidate: Side, serve: Any, fast_lane: bool
) -> None:
    legacy.mode = candidate.mode = "random"
    routes = write_routes(tmp_path, legacy, candidate, "{to: cand, noise: 1.0}")
    served = await serve(routes, fast_lane=fast_lane)
    await served.get_all(["/api/items"] * 10)
    report = await served.settled("items", 10)
    assert (report["noise"], report["mismatched"], report["noise_samples"]) == (10, 0, 10)
    # The primary was asked a second time for each copy.
    assert len(legacy.seen) == 20


@paths
@pytest.mark.parametrize("reverse", [False, True], ids=["legacy-to-new", "new-to-legacy"])
async def test_shadow_between_legacy_and_the_in_process_app(  # noqa: PLR0917 (fixtures)
    tmp_path: Path, legacy: Side, candidate: Side, serve: Any, fast_lane: bool, reverse: bool
) -> None:
    route = (
        "to: new, shadow: {to: legacy, noise: 0}"
        if reverse
        else "to: legacy, shadow: {to: new, noise: 0}"
    )
    extra = f'  - {{id: users, match: "GET /api/users/{{id}}", {route}}}\n'
    served = await serve(
        write_routes(tmp_path, legacy, candidate, "{to: cand}", extra), fast_lane=fast_lane
    )
    answers = await served.get_all([f"/api/users/{n}" for n in range(4)])
    report = await served.settled("users", 4)
    # Legacy saw each request once: as the primary, or as the copy.
    assert sorted(path for _, path, _ in legacy.seen) == [f"/api/users/{n}" for n in range(4)]
    # The sample app answers its own JSON: every copy differs, in the body.
    assert report["mismatched"] == 4
    if reverse:
        assert all(json.loads(body)["side"] == "new" for _, body in answers)
    else:
        assert answers == [await _direct(legacy, f"/api/users/{n}") for n in range(4)]


@paths
async def test_a_reload_turns_shadow_on_and_off(
    tmp_path: Path, legacy: Side, candidate: Side, serve: Any, fast_lane: bool
) -> None:
    routes = write_routes(tmp_path, legacy, candidate, "{to: cand}")
    routes.write_text(routes.read_text().replace(", shadow: {to: cand}", ""), encoding="utf-8")
    served = await serve(routes, fast_lane=fast_lane)
    await served.get_all(["/api/items"] * 3)
    assert candidate.seen == []
    write_routes(tmp_path, legacy, candidate, "{to: cand, noise: 0}")
    assert served.app[PROXY].watcher.reload().ok
    await served.get_all(["/api/items"] * 3)
    assert (await served.settled("items", 3))["matched"] == 3


@paths
async def test_a_copied_request_leaves_no_reference_cycle(
    tmp_path: Path, legacy: Side, candidate: Side, serve: Any, fast_lane: bool
) -> None:
    # A cycle through the tap would leave every copied request's objects for
    # the garbage collector, whose full passes stall the event loop.
    routes = write_routes(tmp_path, legacy, candidate, "{to: cand, noise: 0}")
    served = await serve(routes, fast_lane=fast_lane)
    await served.get_all(["/api/items"])  # warm-up: pools, caches
    await served.settled("items", 1)
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        await served.get_all(["/api/items"] * 10)
        assert (await served.settled("items", 11))["matched"] == 11
        gc.collect()
        cyclic = [type(o).__name__ for o in gc.garbage if type(o) in {PrimaryTap, LaneCall, _Call}]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert cyclic == []
