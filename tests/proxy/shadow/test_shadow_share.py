"""A shadow's sample holds through the proxy, on both paths and for handed-over requests.

The draw is part of the one decision (`proxy.core.decision.decide`); a
request the fast lane decided and hands to aiohttp's path (an in-process
`new` target) keeps the lane's draw with the rest of its decision. Each case
sends 400 requests on fresh connections (the first request of a connection
is the one handed over), seeded; the bound is 0.3 +/- 0.075 (over three
standard deviations).
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

import pytest

from proxy.serving.app import ShadowLimits
from tests.proxy.forward_support import RawClient, request
from tests.proxy.shadow.test_live_shadow import candidate, legacy, serve, write_routes

if TYPE_CHECKING:
    from pathlib import Path

    from tests.proxy.shadow.sides import Side

__all__ = ["candidate", "legacy", "serve"]  # fixtures, shared with test_live_shadow

REQUESTS = 400
SAMPLE = 0.3
TOLERANCE = 0.075


@pytest.mark.parametrize("to", ["new", "legacy"], ids=["handed-over", "lane-served"])
@pytest.mark.parametrize("fast_lane", [True, False], ids=["fast-lane", "aiohttp-path"])
async def test_the_shadow_sample_holds_through_the_proxy(  # noqa: PLR0917 (fixtures)
    tmp_path: Path, legacy: Side, candidate: Side, serve: Any, fast_lane: bool, to: str
) -> None:
    shadow_to = "legacy" if to == "new" else "cand"
    extra = (
        f'  - {{id: users, match: "GET /api/users/{{id}}", to: {to},'
        f" shadow: {{to: {shadow_to}, sample: {SAMPLE}, noise: 0}}}}\n"
    )
    routes = write_routes(tmp_path, legacy, candidate, "{to: cand}", extra)
    served = await serve(routes, fast_lane=fast_lane, limits=ShadowLimits(rate=0))
    random.seed(20261208)
    for n in range(REQUESTS):
        client = await RawClient.connect(served.port)
        try:
            await client.send(request("GET", f"/api/users/{n}"))
            assert (await client.read_response()).status == 200
        finally:
            await client.close()
    report = await served.settled("users", REQUESTS)
    copied = REQUESTS - report["skipped"].get("sampled_out", 0)
    assert abs(copied / REQUESTS - SAMPLE) <= TOLERANCE, report
