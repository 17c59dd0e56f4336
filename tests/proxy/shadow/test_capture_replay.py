"""A capture made by the proxy, replayed by `club-proxy compare` against club-api and new_services.

The live shadow and the offline run judge the same traffic with the same
engine: the report must agree with the live verdict route by route; a
seeded regression in the new app must show in the report with its path and
set the exit code; no byte on disk or in a report may hold the seed token;
and the HAR exported from the capture replays the same requests.
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from proxy.__main__ import main
from proxy.core.state import PROXY
from proxy.shadow.records import read_records
from tests.proxy.forward_support import RawClient, request
from tests.proxy.shadow.test_compare_cli import routes_of
from tests.proxy.shadow.test_seeded_regressions import ROOT, TRAFFIC, club, proxies

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

    from tests.proxy.shadow.test_live_shadow import Served

__all__ = ["club", "proxies"]  # fixtures, shared with test_seeded_regressions

TOKEN = "seed-token-1"
TOTAL = sum(len(targets) for targets in TRAFFIC.values())


def add_capture(routes: Path, capture_file: Path) -> None:
    """Record every request of the shadowed read routes (the live run's traffic)."""
    table = yaml.safe_load(routes.read_text(encoding="utf-8"))
    for route in table["routes"]:
        if route["id"] in TRAFFIC:
            route["capture"] = {"file": str(capture_file), "sample": 1.0}
    routes.write_text(yaml.safe_dump(table, sort_keys=False), encoding="utf-8")


async def captured(served: Served) -> None:
    shadow = served.app[PROXY].shadow
    assert shadow is not None
    writer = shadow.capture
    assert writer is not None
    await served.settled("users-list", len(TRAFFIC["users-list"]))
    for route, targets in TRAFFIC.items():
        await served.settled(route, len(targets))
    for _ in range(200):
        if sum(n for (_, outcome), n in writer.counts.items() if outcome == "written") >= TOTAL:
            return
        await served.book.report()  # a turn of the loop for the writer
    msg = f"captured {writer.counts}"
    raise AssertionError(msg)


@pytest.fixture
async def live(
    tmp_path: Path, club: Callable[..., Awaitable[Served]]
) -> tuple[Served, dict[str, dict[str, Any]], Path, Path]:
    """The live run: traffic through the proxy, shadowed to the real app, and captured."""
    served = await club("unmutated")
    routes = tmp_path / "routes.yaml"
    capture_file = tmp_path / "captures" / "reads.jsonl"
    add_capture(routes, capture_file)
    assert served.app[PROXY].watcher.reload().ok
    targets = [t for targets in TRAFFIC.values() for t in targets]
    client_answers = await _send_with_token(served, targets)
    assert len(client_answers) == TOTAL
    await captured(served)
    verdicts = {route: await served.book.report(route) for route in TRAFFIC}
    return served, verdicts, routes, capture_file


async def _send_with_token(served: Served, targets: list[str]) -> list[int]:
    client = await RawClient.connect(served.port)
    statuses = []
    try:
        for target in targets:
            await client.send(
                request("GET", target, headers=[("Authorization", f"Bearer {TOKEN}")])
            )
            statuses.append((await client.read_response()).status)
    finally:
        await client.close()
    return statuses


def _legacy_url(routes: Path) -> str:
    return str(yaml.safe_load(routes.read_text(encoding="utf-8"))["upstreams"]["legacy"]["url"])


def _config_dir(routes: Path) -> str:
    return str(yaml.safe_load(routes.read_text(encoding="utf-8"))["new"]["config_dir"])


@dataclass
class Run:
    code: int
    out: str
    err: str


async def _compare(routes: Path, inputs: list[Path], report: Path, factory: str) -> Run:
    """`club-proxy compare` as a user runs it: its own process (one new_services app each)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        "compare",
        *map(str, inputs),
        "--legacy",
        _legacy_url(routes),
        "--new-app",
        f"tests.proxy.shadow.mutants:{factory}",
        "--config-dir",
        _config_dir(routes),
        "--routes",
        str(routes),
        "--noise",
        "0",
        "--credential",
        f"Authorization=Bearer {TOKEN}",
        "--report",
        str(report),
        "--fail-under",
        "0.999",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return Run(process.returncode, out.decode(), err.decode())


async def test_the_offline_run_agrees_with_the_live_shadow_and_keeps_no_secret(
    tmp_path: Path, live: tuple[Served, dict[str, dict[str, Any]], Path, Path]
) -> None:
    _, verdicts, routes, capture_file = live
    raw = capture_file.read_bytes()
    assert raw.count(b"\n") == TOTAL
    assert TOKEN.encode() not in raw
    result = await _compare(routes, [capture_file], tmp_path / "same", "unmutated")
    assert result.code == 0, result.out + result.err
    offline = routes_of(tmp_path / "same")
    for route, targets in TRAFFIC.items():
        assert offline[route]["verdict"] == verdicts[route]["verdict"] == "ready", route
        assert offline[route]["matched"] == verdicts[route]["matched"] == len(targets)
    for name in ("report.json", "report.html"):
        assert TOKEN not in (tmp_path / "same" / name).read_text(encoding="utf-8")
    assert TOKEN not in result.out + result.err


async def test_a_seeded_regression_is_in_the_report_and_fails_the_run(
    tmp_path: Path, live: tuple[Served, dict[str, dict[str, Any]], Path, Path]
) -> None:
    _, _, routes, capture_file = live
    result = await _compare(routes, [capture_file], tmp_path / "renamed", "renamed_key")
    assert result.code == 1, result.out
    users = routes_of(tmp_path / "renamed")["users-list"]
    assert users["verdict"] == "not_ready"
    assert {g["signature"] for g in users["differences"]} == {
        "missing:$.items[*].email",
        "extra:$.items[*].mail",
    }
    assert "missing:$.items[*].email" in result.out or "$.items[*].email" in result.out
    # Its examples carry the replayed requests' headers: the credential masked.
    example = users["differences"][0]["examples"][0]
    assert any(k.lower() == "authorization" for k, _ in example["request_headers"])
    for name in ("report.json", "report.html"):
        assert TOKEN not in (tmp_path / "renamed" / name).read_text(encoding="utf-8")


async def test_the_exported_har_replays_the_same_requests(
    tmp_path: Path, live: tuple[Served, dict[str, dict[str, Any]], Path, Path]
) -> None:

    _, _, routes, capture_file = live
    har = tmp_path / "reads.har"
    assert (
        await asyncio.to_thread(main, ["capture", "export", str(capture_file), "--har", str(har)])
        == 0
    )
    assert list(read_records(har)) == list(read_records(capture_file))
    from_capture = await _compare(routes, [capture_file], tmp_path / "a", "unmutated")
    from_har = await _compare(routes, [har], tmp_path / "b", "unmutated")
    assert from_capture.code == from_har.code == 0
    counts = ("compared", "matched", "mismatched", "noise", "errors", "skipped")
    a, b = routes_of(tmp_path / "a"), routes_of(tmp_path / "b")
    assert {r: [a[r][c] for c in counts] for r in a} == {r: [b[r][c] for c in counts] for r in b}
    assert json.loads((tmp_path / "b" / "report.json").read_text())["run"]["replayed"] == TOTAL
