"""The shadow's admin API, its metrics and `club-proxy shadow status|suggest`, on real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import io
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from aiohttp import web

from proxy.__main__ import main
from proxy.serving.admin import create_admin_app
from tests.proxy.shadow.test_live_shadow import candidate, legacy, serve, write_routes

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from tests.proxy.shadow.sides import Side
    from tests.proxy.shadow.test_live_shadow import Served

__all__ = ["candidate", "legacy", "serve"]  # fixtures, shared with test_live_shadow


@pytest.fixture
async def admin_of() -> AsyncIterator[Any]:
    runners: list[web.AppRunner] = []

    async def start(served: Served, token: str | None = None) -> str:
        runner = web.AppRunner(create_admin_app(served.app, token=token))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    yield start
    for runner in runners:
        await runner.cleanup()


async def _json(method: str, url: str, **kwargs: Any) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, **kwargs) as response,
    ):
        return response.status, await response.json()


async def test_shadow_results_reset_and_metrics_on_the_admin_port(
    tmp_path: Path, legacy: Side, candidate: Side, serve: Any, admin_of: Any
) -> None:
    candidate.mode = "renamed"
    routes = write_routes(
        tmp_path, legacy, candidate, "{to: cand, noise: 0, verdict: {min_requests: 4}}"
    )
    served = await serve(routes, fast_lane=True)
    admin = await admin_of(served)
    await served.get_all(["/api/items"] * 4)
    await served.settled("items", 4)
    status, listing = await _json("GET", f"{admin}/-/shadow")
    assert status == 200
    assert (listing["store"], listing["store_ok"]) == ("memory", True)
    [items] = listing["routes"]
    assert (items["id"], items["shadow_to"], items["compared"], items["verdict"]) == (
        "items",
        "cand",
        4,
        "not_ready",
    )
    assert {d["signature"] for d in items["differences"]} >= {"missing:$.items[*].id"}
    assert "examples" not in items["differences"][0]
    status, one = await _json("GET", f"{admin}/-/shadow/items")
    assert status == 200
    assert one["differences"][0]["examples"]
    assert (await _json("GET", f"{admin}/-/shadow/nope"))[0] == 404
    status, metrics_text = await _text(f"{admin}/-/metrics")
    assert (
        'club_proxy_shadow_requests_total{outcome="mismatch",reason="",route="items"} 4.0'
        in metrics_text
    )
    assert (
        'club_proxy_shadow_latency_seconds_count{route="items",side="candidate"} 4.0'
        in metrics_text
    )
    assert "club_proxy_shadow_queue_depth 0.0" in metrics_text
    status, reset = await _json("POST", f"{admin}/-/shadow/items/reset")
    assert (status, reset) == (200, {"id": "items", "reset": True})
    after = await served.book.report("items")
    assert (after["compared"], after["differences"]) == (0, [])


async def _text(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.text()


async def test_the_shadow_api_needs_the_admin_token(
    tmp_path: Path, legacy: Side, candidate: Side, serve: Any, admin_of: Any
) -> None:
    served = await serve(write_routes(tmp_path, legacy, candidate, "{to: cand}"), fast_lane=True)
    admin = await admin_of(served, token="s3cret")
    assert (await _json("GET", f"{admin}/-/shadow"))[0] == 401
    assert (await _json("POST", f"{admin}/-/shadow/items/reset"))[0] == 401
    headers = {"Authorization": "Bearer s3cret"}
    assert (await _json("GET", f"{admin}/-/shadow", headers=headers))[0] == 200


async def _cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()

    def run() -> int:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            return main(list(argv))

    code = await asyncio.to_thread(run)
    return code, out.getvalue(), err.getvalue()


async def test_shadow_status_and_suggest_in_the_terminal(
    tmp_path: Path, legacy: Side, candidate: Side, serve: Any, admin_of: Any
) -> None:
    legacy.mode = candidate.mode = "random"
    routes = write_routes(
        tmp_path, legacy, candidate, "{to: cand, noise: 1.0, verdict: {min_requests: 5}}"
    )
    served = await serve(routes, fast_lane=False)
    admin = await admin_of(served, token="t0k")
    await served.get_all(["/api/items"] * 12)
    await served.settled("items", 12)
    code, out, _ = await _cli("shadow", "status", "--admin", admin, "--token", "t0k")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "results: memory (this process only)"
    assert lines[1].split() == [
        "route",
        "to",
        "compared",
        "match",
        "mismatch",
        "noise",
        "errors",
        "skipped",
        "rate",
        "verdict",
    ]
    assert lines[2].split() == ["items", "cand", "12", "0", "0", "12", "0", "0", "-", "collecting"]
    code, out, _ = await _cli("shadow", "suggest", "items", "--admin", admin, "--token", "t0k")
    assert code == 0
    assert "$.items[0].nonce" in out or "$.items[*].nonce" in out
    code, _, err = await _cli("shadow", "status", "--admin", admin)
    assert code == 1
    assert "401" in err
