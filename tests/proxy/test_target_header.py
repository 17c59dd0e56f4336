"""Which side answered: `expose_target:` and `X-Club-Force-Target`, on both request paths.

The proxy is served on loopback with the fast lane and without it, in front
of two real echo upstreams (`legacy`, the default, and `other`) and the
in-process `new` app. Raw requests through a real socket check that answers
carry `X-Club-Target` only when routes.yaml asks (top level or per route),
that a trusted peer (127.0.0.1 within `trusted_proxies`) can force a side,
and that an untrusted peer's or an unknown target's `X-Club-Force-Target` is
ignored; the header never reaches an upstream.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from proxy.errors import RoutesError
from proxy.routing.table import parse_routes
from proxy.serving.app import create_app
from tests.proxy import forward_support
from tests.proxy.echo_upstream import EchoUpstream
from tests.proxy.forward_support import RawClient, RawResponse, request, serve_proxy

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

upstream = forward_support.upstream

FORCE = "X-Club-Force-Target"
SHOWN = "X-Club-Target"
LOOPBACK = ("127.0.0.1/32",)

fast_lanes = pytest.mark.parametrize("fast_lane", [True, False], ids=["fast-lane", "aiohttp-path"])


@pytest.fixture
async def other() -> AsyncIterator[EchoUpstream]:
    echo = await EchoUpstream().start()
    yield echo
    await echo.close()


def _routes(
    tmp_path: Path, legacy: EchoUpstream, other: EchoUpstream, *, top: str = "", route: str = ""
) -> Path:
    path = tmp_path / "routes.yaml"
    path.write_text(
        "version: 1\n"
        f"{top}"
        "upstreams:\n"
        f'  legacy: {{url: "{legacy.url}"}}\n'
        f'  other: {{url: "{other.url}"}}\n'
        'new: {app: "tests.proxy.newapp_sample:create_app"}\n'
        "default: legacy\n"
        "routes:\n"
        f'  - {{id: user-get, match: "GET /api/users/{{id}}", to: legacy{route}}}\n'
        '  - {id: state, match: "GET /api/state", to: new}\n',
        encoding="utf-8",
    )
    return path


async def _ask(
    routes: Path,
    requests: list[tuple[str, list[tuple[str, str]]]],
    *,
    fast_lane: bool,
    trusted: tuple[str, ...] = (),
) -> list[RawResponse]:
    """Each (target, headers) as a GET on one keep-alive connection to a fresh proxy."""
    app = create_app(
        routes_path=routes, reload_on_sighup=False, fast_lane=fast_lane, trusted_proxies=trusted
    )
    runner, port = await serve_proxy(app)
    client = await RawClient.connect(port)
    answers = []
    try:
        for target, headers in requests:
            await client.send(request("GET", target, headers=headers))
            answer = await client.read_response()
            assert answer.status == 200, answer.body
            answers.append(answer)
    finally:
        await client.close()
        await runner.cleanup()
    return answers


def _side(answer: RawResponse, other: EchoUpstream) -> str:
    """`new` (the in-process app), `other` or `legacy` (the echo upstreams)."""
    body = json.loads(answer.body)
    if body.get("side") == "new":
        return "new"
    return "other" if body.get("port") == other.port else "legacy"


@fast_lanes
async def test_no_target_header_by_default(
    tmp_path: Path, upstream: EchoUpstream, other: EchoUpstream, fast_lane: bool
) -> None:
    answers = await _ask(
        _routes(tmp_path, upstream, other),
        [("/api/users/1", []), ("/elsewhere", []), ("/api/state", [])],
        fast_lane=fast_lane,
    )
    assert [a.header(SHOWN) for a in answers] == [None, None, None]


@fast_lanes
async def test_top_level_expose_target_names_every_side(
    tmp_path: Path, upstream: EchoUpstream, other: EchoUpstream, fast_lane: bool
) -> None:
    answers = await _ask(
        _routes(tmp_path, upstream, other, top="expose_target: true\n"),
        [("/api/users/1", []), ("/elsewhere", []), ("/api/state", [])],
        fast_lane=fast_lane,
    )
    assert [a.all(SHOWN) for a in answers] == [["legacy"], ["legacy"], ["new"]]
    assert [_side(a, other) for a in answers] == ["legacy", "legacy", "new"]


@fast_lanes
async def test_per_route_expose_target(
    tmp_path: Path, upstream: EchoUpstream, other: EchoUpstream, fast_lane: bool
) -> None:
    answers = await _ask(
        _routes(tmp_path, upstream, other, route=", expose_target: true"),
        [("/api/users/1", []), ("/elsewhere", []), ("/api/state", [])],
        fast_lane=fast_lane,
    )
    assert [a.header(SHOWN) for a in answers] == ["legacy", None, None]
    # A route's own `false` wins over the top-level `true`.
    answers = await _ask(
        _routes(
            tmp_path, upstream, other, top="expose_target: true\n", route=", expose_target: false"
        ),
        [("/api/users/1", []), ("/elsewhere", [])],
        fast_lane=fast_lane,
    )
    assert [a.header(SHOWN) for a in answers] == [None, "legacy"]


@fast_lanes
async def test_a_trusted_peer_forces_a_side(
    tmp_path: Path, upstream: EchoUpstream, other: EchoUpstream, fast_lane: bool
) -> None:
    answers = await _ask(
        _routes(tmp_path, upstream, other, top="expose_target: true\n"),
        [
            ("/api/users/1", [(FORCE, "other")]),
            ("/api/users/2", [(FORCE, "new")]),
            ("/api/state", [(FORCE, "legacy")]),
            ("/elsewhere", [(FORCE, "other")]),
            ("/api/users/3", []),
        ],
        fast_lane=fast_lane,
        trusted=LOOPBACK,
    )
    assert [_side(a, other) for a in answers] == ["other", "new", "legacy", "other", "legacy"]
    assert [a.header(SHOWN) for a in answers] == ["other", "new", "legacy", "other", "legacy"]
    received = upstream.received + other.received
    assert len(received) == 4
    assert all(r.header(FORCE) is None for r in received)


@fast_lanes
async def test_an_untrusted_peer_cannot_force_a_side(
    tmp_path: Path, upstream: EchoUpstream, other: EchoUpstream, fast_lane: bool
) -> None:
    answers = await _ask(
        _routes(tmp_path, upstream, other),
        [("/api/users/1", [(FORCE, "other")]), ("/api/state", [(FORCE, "legacy")])],
        fast_lane=fast_lane,
    )
    assert [_side(a, other) for a in answers] == ["legacy", "new"]
    assert other.received == []
    assert [r.header(FORCE) for r in upstream.received] == [None]


@fast_lanes
async def test_an_unknown_target_is_ignored(
    tmp_path: Path, upstream: EchoUpstream, other: EchoUpstream, fast_lane: bool
) -> None:
    answers = await _ask(
        _routes(tmp_path, upstream, other),
        [("/api/users/1", [(FORCE, "nowhere")]), ("/api/users/2", [(FORCE, "")])],
        fast_lane=fast_lane,
        trusted=LOOPBACK,
    )
    assert [_side(a, other) for a in answers] == ["legacy", "legacy"]
    assert other.received == []
    assert [r.header(FORCE) for r in upstream.received] == [None, None]


def test_expose_target_must_be_a_boolean(tmp_path: Path) -> None:
    text = (
        "version: 1\n"
        "expose_target: sometimes\n"
        'upstreams: {legacy: {url: "http://127.0.0.1:1"}}\n'
        "default: legacy\n"
        "routes:\n"
        '  - {id: r, match: "GET /x", to: legacy, expose_target: 1}\n'
    )
    with pytest.raises(RoutesError) as caught:
        parse_routes(text.encode(), tmp_path / "routes.yaml")
    problems = str(caught.value)
    assert "expose_target" in problems
    assert "must be true or false" in problems
    assert len(caught.value.errors) == 2


def test_the_table_describes_expose_target(tmp_path: Path) -> None:
    text = (
        "version: 1\n"
        "expose_target: true\n"
        'upstreams: {legacy: {url: "http://127.0.0.1:1"}}\n'
        "default: legacy\n"
        "routes:\n"
        '  - {id: r, match: "GET /x", to: legacy}\n'
        '  - {id: s, match: "GET /y", to: legacy, expose_target: off}\n'
    )
    described = parse_routes(text.encode(), tmp_path / "routes.yaml").as_dict()
    assert described["expose_target"] is True
    assert [r["expose_target"] for r in described["routes"]] == [True, False]
