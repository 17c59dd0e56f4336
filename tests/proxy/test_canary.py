"""Canary choice: weights within statistical bounds, and sticky clients."""

from __future__ import annotations

import math
import textwrap
from typing import TYPE_CHECKING

import pytest
from multidict import CIMultiDict

from proxy.routing.canary import choose_target, sticky_bucket
from proxy.routing.table import RouteTable, load_routes

if TYPE_CHECKING:
    from pathlib import Path

DRAWS = 10_000


def table(tmp_path: Path, canary: str) -> RouteTable:
    path = tmp_path / "routes.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            version: 1
            upstreams: {{legacy: {{url: "http://127.0.0.1:8080"}}}}
            new: {{app: "tests.proxy.newapp_sample:create_app"}}
            default: legacy
            routes:
              - {{id: plain, match: "GET /plain", to: legacy}}
              - {{id: split, match: "GET /split", to: legacy, canary: {canary}}}
            """
        ),
        encoding="utf-8",
    )
    return load_routes(path)


def within_five_sigma(hits: int, draws: int, weight: float) -> bool:
    sigma = math.sqrt(draws * weight * (1 - weight))
    return abs(hits - draws * weight) <= 5 * sigma


def test_route_without_canary_keeps_its_target(tmp_path: Path) -> None:
    routes = table(tmp_path, "{to: new, weight: 0.5}")
    assert choose_target(routes.match("GET", "/plain"), {}, {}) == "legacy"
    assert choose_target(routes.match("GET", "/unlisted"), {}, {}) == "legacy"


@pytest.mark.parametrize(("weight", "expected"), [("0", "legacy"), ("1", "new"), ("1.0", "new")])
def test_weight_bounds_are_exact(tmp_path: Path, weight: str, expected: str) -> None:
    match = table(tmp_path, f"{{to: new, weight: {weight}}}").match("GET", "/split")
    assert {choose_target(match, {}, {}) for _ in range(1000)} == {expected}


@pytest.mark.parametrize("weight", [0.05, 0.2, 0.5])
def test_random_split_holds_the_weight(tmp_path: Path, weight: float) -> None:
    match = table(tmp_path, f"{{to: new, weight: {weight}}}").match("GET", "/split")
    hits = sum(choose_target(match, {}, {}) == "new" for _ in range(DRAWS))
    assert within_five_sigma(hits, DRAWS, weight), hits


def test_sticky_header_keeps_each_client_on_one_side(tmp_path: Path) -> None:
    match = table(tmp_path, '{to: new, weight: 0.3, sticky: "header:Authorization"}').match(
        "GET", "/split"
    )
    for client in range(200):
        headers = CIMultiDict({"authorization": f"Bearer token-{client}"})  # any case
        sides = {choose_target(match, headers, {}) for _ in range(20)}
        assert len(sides) == 1


def test_sticky_header_proportion_holds(tmp_path: Path) -> None:
    weight = 0.3
    match = table(tmp_path, f'{{to: new, weight: {weight}, sticky: "header:X-User"}}').match(
        "GET", "/split"
    )
    hits = sum(
        choose_target(match, CIMultiDict({"X-User": f"user-{n}"}), {}) == "new"
        for n in range(DRAWS)
    )
    assert within_five_sigma(hits, DRAWS, weight), hits


def test_sticky_cookie(tmp_path: Path) -> None:
    weight = 0.1
    match = table(tmp_path, f'{{to: new, weight: {weight}, sticky: "cookie:uid"}}').match(
        "GET", "/split"
    )
    sides = [choose_target(match, {}, {"uid": str(n)}) for n in range(DRAWS)]
    assert within_five_sigma(sides.count("new"), DRAWS, weight)
    assert sides == [choose_target(match, {}, {"uid": str(n)}) for n in range(DRAWS)]


def test_missing_sticky_value_falls_back_to_random(tmp_path: Path) -> None:
    weight = 0.4
    match = table(tmp_path, f'{{to: new, weight: {weight}, sticky: "cookie:uid"}}').match(
        "GET", "/split"
    )
    hits = sum(choose_target(match, {}, {"other": "x"}) == "new" for _ in range(DRAWS))
    assert within_five_sigma(hits, DRAWS, weight), hits


def test_raising_the_weight_never_moves_a_client_back(tmp_path: Path) -> None:
    low = table(tmp_path, '{to: new, weight: 0.1, sticky: "cookie:uid"}').match("GET", "/split")
    high = table(tmp_path, '{to: new, weight: 0.3, sticky: "cookie:uid"}').match("GET", "/split")
    on_canary = [n for n in range(2000) if choose_target(low, {}, {"uid": str(n)}) == "new"]
    assert on_canary
    assert all(choose_target(high, {}, {"uid": str(n)}) == "new" for n in on_canary)


def test_bucket_is_stable_across_processes() -> None:
    # Golden value: blake2b-64 of the UTF-8 value, independent of PYTHONHASHSEED.
    assert sticky_bucket("Bearer abc") == pytest.approx(0.9471494528624338, abs=1e-12)
    assert 0.0 <= sticky_bucket("") < 1.0
