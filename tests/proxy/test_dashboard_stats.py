"""`/-/stats` (the dashboard's live numbers) and the dashboard's files, on real sockets."""

from __future__ import annotations

import math
from importlib import resources
from itertools import accumulate
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest

from proxy.core.state import PROXY
from proxy.serving.dashboard import quantile
from proxy.telemetry.metrics import _BUCKETS
from tests.proxy.shadow.test_live_shadow import candidate, legacy, serve, write_routes
from tests.proxy.shadow.test_shadow_admin import admin_of

if TYPE_CHECKING:
    from pathlib import Path

    from tests.proxy.shadow.sides import Side

__all__ = ["admin_of", "candidate", "legacy", "serve"]  # fixtures

INF = math.inf
BROKEN = '  - {id: broken, match: "GET /api/broken", to: down}\n'


@pytest.mark.parametrize(
    ("q", "buckets", "expected"),
    [
        # nothing observed yet
        (0.5, [(0.1, 0), (INF, 0)], None),
        (0.5, [], None),
        # all in the first bucket: interpolated from 0 to its bound
        (0.5, [(0.1, 4), (1.0, 4), (INF, 4)], 0.05),
        # the rank falls in the second bucket: from 0.1 towards 1.0
        (0.5, [(0.1, 2), (1.0, 6), (INF, 6)], 0.1 + 0.9 * (3 - 2) / 4),
        # exactly on a bucket's upper edge
        (0.5, [(0.1, 3), (1.0, 6), (INF, 6)], 0.1),
        # in +Inf: the highest finite bound, as Prometheus answers
        (0.99, [(0.1, 1), (1.0, 1), (INF, 100)], 1.0),
        # an empty first bucket and q = 0: its bound
        (0.0, [(0.1, 0), (INF, 5)], 0.1),
    ],
)
def test_quantile_from_buckets(
    q: float, buckets: list[tuple[float, float]], expected: float | None
) -> None:
    assert quantile(q, buckets) == (None if expected is None else pytest.approx(expected))


async def _get(url: str, token: str | None = None) -> tuple[int, str, Any, bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as response:
        return response.status, response.content_type, response.headers, await response.read()


async def test_stats_count_requests_errors_and_latency_per_route_and_target(
    tmp_path: Path, legacy: Side, candidate: Side, serve: Any, admin_of: Any
) -> None:
    routes = write_routes(tmp_path, legacy, candidate, "{to: cand, noise: 0}", extra=BROKEN)
    served = await serve(routes, fast_lane=True)
    admin = await admin_of(served)
    await served.get_all(["/api/items"] * 6 + ["/api/plain"] * 3 + ["/api/broken"] * 2)
    await served.settled("items", 6)
    async with aiohttp.ClientSession() as session, session.get(f"{admin}/-/stats") as response:
        assert response.status == 200
        stats = await response.json()
    traffic = {(e["route"], e["target"]): e for e in stats["traffic"]}
    assert {key: (e["requests"], e["errors"]) for key, e in traffic.items()} == {
        ("items", "legacy"): (6, 0),
        ("plain", "legacy"): (3, 0),
        ("broken", "down"): (2, 2),  # 502: the upstream refused the connection
    }
    # The quantiles are the metrics' own buckets, read through /-/metrics' registry.
    latency = served.app[PROXY].metrics.latency
    for key, entry in traffic.items():
        buckets = list(zip((*_BUCKETS, INF), accumulate(latency[key][0]), strict=True))
        assert entry["p50"] == pytest.approx(quantile(0.5, buckets))
        assert entry["p99"] == pytest.approx(quantile(0.99, buckets))
        assert 0 < entry["p50"] <= entry["p99"] <= _BUCKETS[-1]
    sides = {(e["route"], e["side"]): e for e in stats["shadow_latency"]}
    assert set(sides) == {("items", "primary"), ("items", "candidate")}
    assert all(e["count"] == 6 and 0 < e["p50"] <= e["p99"] for e in sides.values())
    assert isinstance(stats["at"], float)


async def test_the_page_its_files_and_stats_need_the_admin_token(
    tmp_path: Path, legacy: Side, candidate: Side, serve: Any, admin_of: Any
) -> None:
    served = await serve(write_routes(tmp_path, legacy, candidate, "{to: cand}"), fast_lane=False)
    admin = await admin_of(served, token="s3cret")
    files = {
        "/-/dashboard": "text/html",
        "/-/dashboard.js": "text/javascript",
        "/-/dashboard.css": "text/css",
        "/-/stats": "application/json",
    }
    for path, content_type in files.items():
        assert (await _get(admin + path))[0] == 401
        status, got_type, headers, body = await _get(admin + path, token="s3cret")
        assert (status, got_type) == (200, content_type)
        assert body
    _, _, headers, page = await _get(f"{admin}/-/dashboard", token="s3cret")
    # No inline script or style may run, whatever an example's body holds.
    assert "script-src 'self';" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert b'<script src="dashboard.js" defer></script>' in page


def test_the_script_never_parses_data_as_markup() -> None:
    # Example bodies and headers come from upstreams: the page builds its DOM
    # from text only (textContent, append of strings), and loads nothing else.
    script = (resources.files("proxy.serving") / "static" / "dashboard.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script
    for name in ("dashboard.html", "dashboard.css", "dashboard.js"):
        text = (resources.files("proxy.serving") / "static" / name).read_text()
        assert "http://" not in text
        assert "https://" not in text
