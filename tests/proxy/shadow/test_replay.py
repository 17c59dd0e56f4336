"""The replay engine: records to both real sides, Diffy's order, the live reasons, route rules."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from aiohttp import web

from proxy.routing.table import parse_routes
from proxy.shadow.candidate import CandidateClients
from proxy.shadow.records import Recorded
from proxy.shadow.redact import mask
from proxy.shadow.replay import DEFAULT_SHADOW, Replay, RouteRules, Sides, replay_headers
from proxy.shadow.results import ShadowBook
from tests.proxy.shadow.sides import Side

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable, Mapping

    from proxy.routing.table import RouteTable

TOKEN_MASK = mask("the production token")

ROUTES = b"""
version: 1
upstreams: {legacy: {url: "http://127.0.0.1:9"}}
new: {url: "http://127.0.0.1:9"}
default: legacy
routes:
  - id: items
    match: "GET /api/items"
    to: legacy
    shadow:
      to: new
      ignore: {json: ["$.path"]}
      timeout: 300ms
      verdict: {min_requests: 3, min_match: 0.9}
      redact: {headers: [X-Secret]}
  - {id: plain, match: "GET /api/plain", to: legacy}
  - {id: big, match: "GET /api/big", to: legacy, shadow: {to: new, max_body: 100KiB}}
  - {id: reverse, match: "GET /api/reverse", to: new, shadow: {to: legacy, noise: 0.5}}
"""


def table() -> RouteTable:
    return parse_routes(ROUTES, Path("routes.yaml"))


def get(target: str, *, route: str | None = None, method: str = "GET", **headers: str) -> Recorded:
    pairs = (("Host", "club.example"), *((k.replace("_", "-"), v) for k, v in headers.items()))
    return Recorded(at=1.0, route=route, method=method, target=target, headers=pairs)


@pytest.fixture
async def clients() -> AsyncIterator[CandidateClients]:
    found = CandidateClients(limit=4)
    yield found
    await found.close()


async def replay(
    clients: CandidateClients,
    legacy: str,
    new: str,
    records: Iterable[Recorded],
    *,
    routes: RouteTable | None = None,
    **options: Any,
) -> tuple[dict[str, Any], Replay]:
    records = list(records)
    rules = RouteRules(routes)
    book = ShadowBook()
    # As the CLI does after its survey of the inputs.
    only = options.get("only", frozenset())
    book.configure({r: s for r, s in map(rules, records) if not only or r in only})
    engine = Replay(
        book=book,
        clients=clients,
        sides=Sides(legacy=(legacy, None), new=(new, None)),
        rules=rules,
        credentials=options.pop("credentials", {}),
        **options,
    )
    await engine.run(records)
    found = await book.report(examples=True)
    assert found is not None
    return {route["id"]: route for route in found["routes"]}, engine


async def test_differences_are_grouped_and_identical_answers_match(clients) -> None:
    legacy, same, renamed = Side("same"), Side("same"), Side("renamed")
    for side in (legacy, same, renamed):
        await side.start()
    try:
        records = [get(f"/api/items?page={n}", route="items") for n in range(4)]
        matched, _ = await replay(clients, legacy.url, same.url, records)
        differing, engine = await replay(clients, legacy.url, renamed.url, records)
    finally:
        for side in (legacy, same, renamed):
            await side.close()
    assert matched["items"]["matched"] == 4
    assert matched["items"]["differences"] == []
    route = differing["items"]
    assert (route["matched"], route["mismatched"]) == (0, 4)
    signatures = {group["signature"]: group for group in route["differences"]}
    assert set(signatures) == {"missing:$.items[*].id", "extra:$.items[*].ident"}
    example = signatures["missing:$.items[*].id"]["examples"][0]
    assert example["target"].startswith("/api/items?page=")
    assert "$.items[0].id" in [d["path"] for d in example["differences"]]
    legacy_times, new_times = engine.latency("items")
    assert len(legacy_times) == len(new_times) == 4
    assert all(t > 0 for t in (*legacy_times, *new_times))


class Logged:
    """A side that logs (its name, the target) in a list shared with the other side."""

    def __init__(self, name: str, log: list[tuple[str, str]]) -> None:
        self.name, self.log = name, log
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> Logged:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        return self

    async def _handle(self, request: web.Request) -> web.Response:
        self.log.append((self.name, request.path_qs))
        return web.json_response({"generated": len(self.log)})


async def test_diffys_order_legacy_new_then_legacy_again_for_the_noise_share(clients) -> None:
    log: list[tuple[str, str]] = []
    legacy, new = await Logged("legacy", log).start(), await Logged("new", log).start()
    try:
        records = [get(f"/r/{n}", route="r") for n in range(20)]
        routes, _ = await replay(clients, legacy.url, new.url, records, concurrency=1, noise=0.25)
    finally:
        for side in (legacy, new):
            assert side.runner is not None
            await side.runner.cleanup()
    # A quarter of the requests, spread evenly, also went to legacy a second time, after new.
    assert routes["r"]["noise_samples"] == 5
    assert [name for name, target in log if target == "/r/3"] == ["legacy", "new", "legacy"]
    assert [name for name, target in log if target == "/r/0"] == ["legacy", "new"]
    # `generated` differs every time: with noise learned from 5 samples, still noise per request.
    assert routes["r"]["noise"] == 5
    assert routes["r"]["mismatched"] == 15


async def test_each_routes_noise_share_without_the_flag(clients) -> None:
    log: list[tuple[str, str]] = []
    legacy, new = await Logged("legacy", log).start(), await Logged("new", log).start()
    try:
        records = [get("/api/reverse") for _ in range(10)] + [get("/api/plain") for _ in range(10)]
        routes, _ = await replay(clients, legacy.url, new.url, records, routes=table())
    finally:
        for side in (legacy, new):
            assert side.runner is not None
            await side.runner.cleanup()
    assert routes["reverse"]["noise_samples"] == 5  # its own `noise: 0.5`
    assert routes["plain"]["noise_samples"] == 1  # the default 0.1
    # The candidate of a run is always new, a reverse shadow's included.
    assert routes["reverse"]["shadow_to"] == "new"


async def test_requests_not_compared_are_counted_with_the_live_reasons(clients) -> None:
    legacy, slow, failing = Side("same"), Side("sleep"), Side("reset")
    for side in (legacy, slow, failing):
        await side.start()
    closed = Side("same")
    await closed.start()
    await closed.close()  # a port nobody listens on any more
    try:
        writes = [get("/api/items", method=m) for m in ("POST", "PUT", "DELETE")]
        routes, engine = await replay(
            clients, legacy.url, slow.url, [*writes, get("/api/items")], routes=table()
        )
        failed, _ = await replay(
            clients, legacy.url, failing.url, [get("/api/items")], routes=table()
        )
        down, _ = await replay(clients, closed.url, legacy.url, [get("/api/items")], routes=table())
    finally:
        for side in (legacy, slow, failing):
            await side.close()
    # `GET /api/items` does not match a write: METHOD and path name their routes.
    for method in ("POST", "PUT", "DELETE"):
        assert routes[f"{method} /api/items"]["skipped"] == {"unsafe_method": 1}
    assert routes["items"]["error_reasons"] == {"timeout": 1}  # the route's 300 ms
    assert engine.replayed == 1
    assert not [seen for seen in slow.seen if seen[0] != "GET"]  # no write was sent
    assert failed["items"]["error_reasons"] == {"candidate_error": 1}
    assert down["items"]["skipped"] == {"primary_error": 1}


async def test_answers_above_the_routes_max_body_are_not_compared(clients) -> None:
    legacy, new = await Side("same").start(), await Side("same").start()
    try:
        routes, _ = await replay(
            clients, legacy.url, new.url, [get("/api/big"), get("/api/big")], routes=table()
        )
    finally:
        await legacy.close()
        await new.close()
    # 300 KiB answers, the route's max_body is 100 KiB.
    assert routes["big"]["skipped"] == {"body_too_large": 2}
    assert routes["big"]["compared"] == 0


async def test_only_keeps_the_routes_named(clients) -> None:
    legacy, new = await Side("same").start(), await Side("same").start()
    try:
        records = [get("/a", route="a"), get("/b", route="b"), get("/a", route="a")]
        routes, engine = await replay(clients, legacy.url, new.url, records, only=frozenset({"a"}))
    finally:
        await legacy.close()
        await new.close()
    assert set(routes) == {"a"}
    assert routes["a"]["matched"] == 2
    assert engine.excluded == 1


def test_route_rules_with_a_table() -> None:
    rules = RouteRules(table())
    route_id, shadow = rules(get("/api/items?page=2"))
    assert route_id == "items"
    assert shadow.ignore_json == ("$.path",)
    assert shadow.verdict.min_requests == 3
    # A route without `shadow:`: the default rules.
    assert rules(get("/api/plain")) == ("plain", DEFAULT_SHADOW)
    # A reverse shadow keeps its rules but its candidate is new.
    route_id, shadow = rules(get("/api/reverse"))
    assert (route_id, shadow.to, shadow.noise) == ("reverse", "new", 0.5)
    # No route matches: the record's own route, else METHOD and path.
    assert rules(get("/elsewhere?q=1", route="rec"))[0] == "rec"
    assert rules(get("/elsewhere?q=1"))[0] == "GET /elsewhere"


def test_route_rules_without_a_table() -> None:
    rules = RouteRules(None)
    assert rules(get("/api/items", route="events-list")) == ("events-list", DEFAULT_SHADOW)
    assert rules(get("/api/items?page=3", method="HEAD")) == ("HEAD /api/items", DEFAULT_SHADOW)


@pytest.mark.parametrize(
    ("headers", "credentials", "expected"),
    [
        # A masked Authorization gets the test credential.
        (
            [("Authorization", TOKEN_MASK)],
            {"authorization": "Bearer seed-token-1"},
            [("Authorization", "Bearer seed-token-1")],
        ),
        # A masked cookie header (names kept, values masked) is replaced whole.
        (
            [("Cookie", f"session={TOKEN_MASK}; theme=dark")],
            {"cookie": "session=seed"},
            [("Cookie", "session=seed")],
        ),
        # A real value (not a mask) is sent as recorded.
        (
            [("Authorization", "Bearer real")],
            {"authorization": "Bearer x"},
            [("Authorization", "Bearer real")],
        ),
        # A mask without a credential is sent as it is.
        ([("Authorization", TOKEN_MASK)], {}, [("Authorization", TOKEN_MASK)]),
        # Hop-by-hop and framing headers are not replayed.
        (
            [("Connection", "close"), ("Content-Length", "3"), ("Accept", "*/*")],
            {},
            [("Accept", "*/*")],
        ),
    ],
    ids=["authorization", "cookie", "unmasked", "no-credential", "hop-by-hop"],
)
def test_replay_headers(
    headers: list[tuple[str, str]], credentials: Mapping[str, str], expected: list[tuple[str, str]]
) -> None:
    assert replay_headers(headers, credentials) == (*expected, ("X-Club-Shadow", "1"))


async def test_examples_mask_credentials_and_the_routes_redacted_headers(clients) -> None:
    legacy, new = await Side("same").start(), await Side("renamed").start()
    try:
        record = get("/api/items", Authorization=TOKEN_MASK, X_Secret="s3cret", X_Key=TOKEN_MASK)
        routes, _ = await replay(
            clients,
            legacy.url,
            new.url,
            [record],
            routes=table(),
            credentials={"authorization": "Bearer seed-token-1", "x-key": "seed-key"},
        )
    finally:
        await legacy.close()
        await new.close()
    # The sides got the credentials.
    assert new.seen[-1][2]["Authorization"] == "Bearer seed-token-1"
    assert new.seen[-1][2]["X-Key"] == "seed-key"
    text = json.dumps(routes)
    assert "seed-token-1" not in text
    assert "seed-key" not in text
    assert "s3cret" not in text
    sent = dict(routes["items"]["differences"][0]["examples"][0]["request_headers"])
    assert sent["Authorization"] == mask("Bearer seed-token-1")
    assert sent["X-Secret"] == mask("s3cret")
