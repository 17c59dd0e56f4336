"""Seeded regressions: the real new_services app, spoiled on purpose, shadowing the real club-api.

club-api (legacy) serves four read endpoints through the proxy on a test
database; every request is copied to `new`, the real new_services app built
in-process by a factory of `tests.proxy.shadow.mutants`, where one endpoint
answers wrong in one way. The shadow must name the regression (its signature:
kind and path), count it on exactly the requests it spoiled, and say
`not_ready`; the unmutated app on the same traffic must be `ready` with no
difference at all. The routes are the repository's routes.yaml, with the read
routes on legacy shadowed to new: `$.generated_at` of the events list stays
ignored as the file says (the answer's clock, not the handler).

Learned noise (the last tests): two sides that both put a random id in the
body are flagged until the primary's own noise is learned, then never again,
and the ignore rule the noise suggests silences them for good.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import pytest
import yaml

from examples.club_api.app import create_app as create_legacy_app
from proxy.core.state import PROXY
from proxy.routing.table import load_routes
from proxy.serving.app import create_app
from proxy.shadow._noise import MIN_NOISE_SAMPLES
from proxy.shadow.results import RuleKind, suggestions_yaml
from tests.club_api.conftest import ROWS_SQL, club_settings
from tests.new_services.test_through_proxy import write_config
from tests.proxy.forward_support import serve_proxy
from tests.proxy.shadow.sides import Side
from tests.proxy.shadow.test_live_shadow import Served

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from proxy.serving.protocol import ProxyAppRunner

ROOT = Path(__file__).resolve().parents[3]
paths = pytest.mark.parametrize("fast_lane", [True, False], ids=["fast-lane", "aiohttp-path"])

# The traffic, per route of the repository's routes.yaml: every target answers
# 200 on both sides except the last of the two detail routes (404 on both).
# Every events page holds at least two events, so that a reversed page differs.
TRAFFIC: dict[str, list[str]] = {
    "users-list": [
        "/api/users",
        "/api/users?limit=2",
        "/api/users?offset=1",
        "/api/users?active=true",
        "/api/users?limit=1&offset=2",
    ],
    "user-get": [
        "/api/users/1",
        "/api/users/2",
        "/api/users/3",
        "/api/users/1",
        "/api/users/2",
        "/api/users/99",
    ],
    "events-list": [
        "/api/events",
        "/api/events?limit=2",
        "/api/events?offset=1",
        "/api/events?active=true",
        "/api/events?limit=3&offset=1",
    ],
    "event-get": [
        "/api/events/1",
        "/api/events/2",
        "/api/events/3",
        "/api/events/4",
        "/api/events/1",
        "/api/events/99",
    ],
}
OK_ANSWERS = {route: len(targets) - route.endswith("-get") for route, targets in TRAFFIC.items()}
MIN_REQUESTS = 5


def _interleaved() -> list[str]:
    """Every target, the routes taking turns (so each route's copies meet the others')."""
    longest = max(len(targets) for targets in TRAFFIC.values())
    return [t[n] for n in range(longest) for t in TRAFFIC.values() if n < len(t)]


def write_routes(
    tmp_path: Path,
    legacy_url: str,
    config_dir: Path,
    factory: str,
    unordered: dict[str, list[str]] | None = None,
) -> Path:
    """The repository's routes.yaml: the read routes on legacy, shadowed to `factory`'s app.

    `unordered`: route id -> its `shadow: unordered:` patterns.
    """
    routes = yaml.safe_load((ROOT / "routes.yaml").read_text(encoding="utf-8"))
    routes["upstreams"]["legacy"]["url"] = legacy_url
    routes["new"] = {"app": f"tests.proxy.shadow.mutants:{factory}", "config_dir": str(config_dir)}
    for route in routes["routes"]:
        if route["id"] in TRAFFIC:
            kept = route.get("shadow", {})
            route["to"] = "legacy"
            route["shadow"] = {
                "to": "new",
                "noise": 0,
                "verdict": {"min_requests": MIN_REQUESTS},
                **({"ignore": kept["ignore"]} if "ignore" in kept else {}),
            }
            if unordered and route["id"] in unordered:
                route["shadow"]["unordered"] = unordered[route["id"]]
    path = tmp_path / "routes.yaml"
    path.write_text(yaml.safe_dump(routes, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
async def proxies() -> AsyncIterator[Callable[..., Awaitable[Served]]]:
    """start(routes, fast_lane=...): the proxy served as `club-proxy run` does; stopped after."""
    started: list[ProxyAppRunner] = []

    async def start(routes: Path, *, fast_lane: bool = True) -> Served:
        app = create_app(routes_path=routes, reload_on_sighup=False, fast_lane=fast_lane)
        runner, port = await serve_proxy(app)
        started.append(runner)
        return Served(app, runner, port)

    yield start
    for runner in started:
        await runner.cleanup()


@pytest.fixture
async def club(  # noqa: PLR0917  (pytest passes fixtures positionally)
    tmp_path: Path,
    pg_dsn: str,
    redis_url: str,
    redis_client: Any,
    aiohttp_server: Any,
    proxies: Callable[..., Awaitable[Served]],
) -> Callable[..., Awaitable[Served]]:
    """start(factory, ...): club-api on a port, the proxy in front, new in-process.

    Both apps share the test database (the club rows) and Redis (flushed).
    """
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute(ROWS_SQL)
    finally:
        await conn.close()
    legacy = await aiohttp_server(create_legacy_app(club_settings(pg_dsn, redis_url)))
    legacy_url = str(legacy.make_url("/")).rstrip("/")
    config_dir = write_config(tmp_path / "config", pg_dsn, redis_url)

    async def start(
        factory: str, *, fast_lane: bool = True, unordered: dict[str, list[str]] | None = None
    ) -> Served:
        routes = write_routes(tmp_path, legacy_url, config_dir, factory, unordered)
        return await proxies(routes, fast_lane=fast_lane)

    return start


async def _walk(served: Served) -> dict[str, dict[str, Any]]:
    """Send the traffic; each route's report once every copy is accounted for."""
    targets = _interleaved()
    answers = await served.get_all(targets)
    statuses = [status for status, _ in answers]
    assert statuses == [404 if t.endswith("/99") else 200 for t in targets]
    return {route: await served.settled(route, len(t)) for route, t in TRAFFIC.items()}


def _signatures(report: dict[str, Any]) -> dict[str, tuple[str, str, int]]:
    """signature -> (kind, path, count) of every difference group."""
    return {g["signature"]: (g["kind"], g["path"], g["count"]) for g in report["differences"]}


def _assert_clean(report: dict[str, Any], total: int) -> None:
    assert (report["compared"], report["matched"], report["mismatched"]) == (total, total, 0), (
        report["differences"]
    )
    assert (report["errors"], report["skipped"], report["noise"]) == (0, {}, 0)
    assert report["verdict"] == "ready", report["verdict_reason"]
    assert report["differences"] == []


def test_the_traffic_covers_the_shadowed_routes_of_the_repository() -> None:
    # The four routes exist in routes.yaml and each target matches its route.
    table = load_routes(ROOT / "routes.yaml")
    for route_id, targets in TRAFFIC.items():
        for target in targets:
            found = table.match("GET", target.split("?")[0]).route
            assert found is not None, target
            assert found.id == route_id, target


@paths
async def test_the_unmutated_app_is_ready_on_every_route(
    club: Callable[..., Awaitable[Served]], fast_lane: bool
) -> None:
    served = await club("unmutated", fast_lane=fast_lane)
    reports = await _walk(served)
    for route, targets in TRAFFIC.items():
        _assert_clean(reports[route], len(targets))


# (factory, route, {signature: (kind, path)}, the answers it spoils), the
# groups exactly as reported: nothing else may differ.
REVERSED_FIELDS = ("id", "title", "starts_at", "capacity")
MUTANTS = [
    pytest.param(
        "renamed_key",
        "users-list",
        {
            "missing:$.items[*].email": ("missing", "$.items[*].email"),
            "extra:$.items[*].mail": ("extra", "$.items[*].mail"),
        },
        id="renamed-key",
    ),
    pytest.param(
        "later_timestamp",
        "event-get",
        {"changed:$.starts_at": ("changed", "$.starts_at")},
        id="off-by-one-timestamp",
    ),
    pytest.param(
        "dropped_item",
        "events-list",
        {"length:$.items": ("length", "$.items")},
        id="dropped-list-item",
    ),
    pytest.param(
        "changed_status",
        "user-get",
        {"changed:status": ("changed", "status")},
        id="changed-status",
    ),
    pytest.param(
        "added_header",
        "users-list",
        {"extra:headers.cache-control": ("extra", "headers.cache-control")},
        id="added-header",
    ),
    pytest.param(
        "changed_header",
        "event-get",
        {"changed:headers.content-type": ("changed", "headers.content-type")},
        id="changed-header",
    ),
]


@pytest.mark.parametrize(("factory", "route", "expected"), MUTANTS)
async def test_a_seeded_regression_is_flagged_at_its_path(
    club: Callable[..., Awaitable[Served]],
    factory: str,
    route: str,
    expected: dict[str, tuple[str, str]],
) -> None:
    served = await club(factory)
    reports = await _walk(served)
    spoiled, total = OK_ANSWERS[route], len(TRAFFIC[route])
    report = reports[route]
    assert (report["compared"], report["mismatched"], report["matched"]) == (
        total,
        spoiled,
        total - spoiled,
    )
    assert _signatures(report) == {
        signature: (kind, path, spoiled) for signature, (kind, path) in expected.items()
    }
    assert report["verdict"] == "not_ready"
    assert all(signature in report["verdict_reason"] for signature in expected)
    for group in report["differences"]:
        assert group["mismatches"] == spoiled
        assert group["examples"][0]["target"] in TRAFFIC[route]
    # The other routes did not move.
    for other, targets in TRAFFIC.items():
        if other != route:
            _assert_clean(reports[other], len(targets))


async def test_a_reordered_page_is_flagged_on_an_ordered_path(
    club: Callable[..., Awaitable[Served]],
) -> None:
    served = await club("reordered")
    reports = await _walk(served)
    report, spoiled = reports["events-list"], OK_ANSWERS["events-list"]
    assert (report["mismatched"], report["matched"], report["verdict"]) == (spoiled, 0, "not_ready")
    found = _signatures(report)
    # Each position holds another event: fields every event has its own value of
    # changed on every page; nothing is missing or extra at the page level.
    for name in REVERSED_FIELDS:
        path = f"$.items[*].{name}"
        assert found[f"changed:{path}"] == ("changed", path, spoiled)
    assert all(path.startswith("$.items[*].") for _, path, _ in found.values()), found
    assert "length:$.items" not in found
    assert "changed:$.items[*].id" in report["verdict_reason"]
    example = next(g for g in report["differences"] if g["signature"] == "changed:$.items[*].id")
    first = {d["path"]: d for d in example["examples"][0]["differences"]}
    assert first["$.items[0].id"]["kind"] == "changed"
    for other in ("users-list", "user-get", "event-get"):
        _assert_clean(reports[other], len(TRAFFIC[other]))


async def test_the_same_reordering_on_an_unordered_path_matches(
    club: Callable[..., Awaitable[Served]],
) -> None:
    served = await club("reordered", unordered={"events-list": ["$.items"]})
    report = (await _walk(served))["events-list"]
    _assert_clean(report, len(TRAFFIC["events-list"]))


# --- learned noise ---------------------------------------------------------------


@pytest.fixture
async def random_sides() -> AsyncIterator[tuple[Side, Side]]:
    """A primary and a candidate that both put a fresh random id in every body."""
    legacy, candidate = Side(mode="random"), Side(mode="random")
    await legacy.start()
    await candidate.start()
    yield legacy, candidate
    await legacy.close()
    await candidate.close()


NOISE_SHARE = 0.3
AFTER_LEARNING = 30


def write_noise_routes(tmp_path: Path, legacy: Side, candidate: Side, pasted: str = "") -> Path:
    """`items` shadowed with a noise share; `pasted` goes under its `shadow:` as is."""
    path = tmp_path / "routes.yaml"
    path.write_text(
        "version: 1\n"
        "upstreams:\n"
        f'  legacy: {{url: "{legacy.url}"}}\n'
        f'  cand: {{url: "{candidate.url}"}}\n'
        "default: legacy\n"
        "routes:\n"
        "  - id: items\n"
        '    match: "GET /api/items"\n'
        "    to: legacy\n"
        "    shadow:\n"
        "      to: cand\n"
        f"      noise: {NOISE_SHARE}\n"
        "      verdict: {min_requests: 10}\n" + textwrap.indent(pasted, " " * 6),
        encoding="utf-8",
    )
    return path


@paths
async def test_noise_is_flagged_until_learned_then_never_and_its_rule_is_suggested(
    tmp_path: Path,
    random_sides: tuple[Side, Side],
    proxies: Callable[..., Awaitable[Served]],
    fast_lane: bool,
) -> None:
    legacy, candidate = random_sides
    served = await proxies(write_noise_routes(tmp_path, legacy, candidate), fast_lane=fast_lane)
    # Learning: until MIN_NOISE_SAMPLES requests were also sent to the primary a
    # second time (a share of NOISE_SHARE of them, drawn at random).
    sent = 0
    while True:
        await served.get_all(["/api/items"] * 10)
        sent += 10
        learning = await served.settled("items", sent)
        if learning["noise_samples"] >= MIN_NOISE_SAMPLES:
            break
        assert sent < 300, learning  # p = 0.3: 300 requests without 10 samples do not happen
    samples = learning["noise_samples"]
    assert len(legacy.seen) == sent + samples  # each sample asked the primary a second time
    # A request with its own second primary answer is noise at once; the others
    # are mismatches until the route knows the field is noisy.
    assert learning["matched"] == 0
    assert learning["noise"] + learning["mismatched"] == sent
    assert learning["noise"] >= samples
    assert learning["mismatched"] > 0

    await served.get_all(["/api/items"] * AFTER_LEARNING)
    after = await served.settled("items", sent + AFTER_LEARNING)
    # Every request since is noise, sampled or not: the verdict is left alone.
    assert (after["matched"], after["mismatched"]) == (0, learning["mismatched"])
    assert after["noise"] == learning["noise"] + AFTER_LEARNING
    [group] = after["differences"]
    assert (group["signature"], group["count"]) == (
        "changed:$.items[*].nonce",
        sent + AFTER_LEARNING,
    )
    assert group["mismatches"] == learning["mismatched"]
    assert (group["noisy"], group["noise_rate"]) == (True, 1.0)
    assert group["noise_count"] == after["noise_samples"] >= samples

    # `club-proxy shadow suggest items`: ignore the field.
    suggestions = await served.book.suggestions("items")
    assert [(s.kind, s.path, s.noise_rate) for s in suggestions] == [
        (RuleKind.JSON, "$.items[*].nonce", 1.0)
    ]
    text = suggestions_yaml("items", suggestions)
    assert '    - "$.items[*].nonce"\n' in text
    # Pasted under the route's shadow as the comment says, the rule holds: a
    # fresh start compares clean from the first request.
    write_noise_routes(tmp_path, legacy, candidate, text)
    assert served.app[PROXY].watcher.reload().ok
    assert await served.book.reset("items") is True
    await served.get_all(["/api/items"] * 10)
    clean = await served.settled("items", 10)
    assert (clean["matched"], clean["mismatched"], clean["noise"]) == (10, 0, 0)
    assert (clean["differences"], clean["verdict"]) == ([], "ready")
