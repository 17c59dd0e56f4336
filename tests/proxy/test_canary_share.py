"""A canary's share through the proxy: each request decided once, whichever path serves it.

A `canary: {to: new, weight: 0.3}` route without `sticky` must send 30% of
requests to `new`. The fast lane decides a request, then hands a `new` one
to aiohttp's path (in-process `new` is answered there); if aiohttp's path
drew again, only 0.3 x 0.3 = 9% of fresh connections would reach `new` (a
keep-alive connection stays on aiohttp's path once handed over, so only its
first request would be drawn twice). Each case sends 1,000 requests as raw
bytes through a real socket, each on a fresh connection that sends no
`Connection: close` (curl in a loop) or all on one keep-alive connection,
with the fast lane and without it, to the in-process `new` app and to
another HTTP upstream (which the lane serves itself). The draws are seeded, so a run is repeatable; the bound is
the issue's 0.3 +/- 0.05 (more than three standard deviations).
"""

from __future__ import annotations

import json
import random
from typing import TYPE_CHECKING

import pytest

from proxy.serving.app import create_app
from tests.proxy import forward_support
from tests.proxy.echo_upstream import EchoUpstream
from tests.proxy.forward_support import RawClient, request, serve_proxy

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

upstream = forward_support.upstream

REQUESTS = 1000
WEIGHT = 0.3
TOLERANCE = 0.05


@pytest.fixture
async def other() -> AsyncIterator[EchoUpstream]:
    echo = await EchoUpstream().start()
    yield echo
    await echo.close()


def _routes(tmp_path: Path, legacy: EchoUpstream, other: EchoUpstream, canary_to: str) -> Path:
    path = tmp_path / "routes.yaml"
    path.write_text(
        "version: 1\n"
        "upstreams:\n"
        f'  legacy: {{url: "{legacy.url}"}}\n'
        f'  other: {{url: "{other.url}"}}\n'
        'new: {app: "tests.proxy.newapp_sample:create_app"}\n'
        "default: legacy\n"
        "routes:\n"
        '  - {id: user-get, match: "GET /api/users/{id}", to: legacy,'
        f" canary: {{to: {canary_to}, weight: {WEIGHT}}}}}\n",
        encoding="utf-8",
    )
    return path


def _side(body: bytes, other: EchoUpstream) -> str:
    """`new` (the in-process app's JSON), `other` or `legacy` (the echo upstreams)."""
    answer = json.loads(body)
    if answer.get("side") == "new":
        return "new"
    return "other" if answer.get("port") == other.port else "legacy"


@pytest.mark.parametrize("canary_to", ["new", "other"])
@pytest.mark.parametrize("fresh_connections", [True, False], ids=["fresh", "keep-alive"])
@pytest.mark.parametrize("fast_lane", [True, False], ids=["fast-lane", "aiohttp-path"])
async def test_the_canary_share_holds_through_the_proxy(  # noqa: PLR0917  (fixtures)
    tmp_path: Path,
    upstream: EchoUpstream,
    other: EchoUpstream,
    canary_to: str,
    fresh_connections: bool,
    fast_lane: bool,
) -> None:
    app = create_app(
        routes_path=_routes(tmp_path, upstream, other, canary_to),
        reload_on_sighup=False,
        fast_lane=fast_lane,
    )
    runner, port = await serve_proxy(app)
    random.seed(20261207)
    sides: list[str] = []
    client: RawClient | None = None
    try:
        for n in range(REQUESTS):
            if client is None:
                client = await RawClient.connect(port)
            await client.send(request("GET", f"/api/users/{n}"))
            response = await client.read_response()
            assert response.status == 200
            sides.append(_side(response.body, other))
            if fresh_connections:
                await client.close()
                client = None
    finally:
        if client is not None:
            await client.close()
        await runner.cleanup()
    assert set(sides) <= {"legacy", canary_to}
    share = sides.count(canary_to) / REQUESTS
    assert abs(share - WEIGHT) <= TOLERANCE, f"{canary_to} got {share:.3f} of the requests"
