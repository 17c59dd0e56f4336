"""`club-proxy compare` end to end: real loopback sides, capture and HAR inputs, reports, exit codes."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest
from aiohttp import web

from proxy.serving.comparecli import add_compare_command, compare
from proxy.shadow.model import Outcome
from proxy.shadow.progress import Progress
from proxy.shadow.records import Recorded, to_har, to_line
from proxy.shadow.redact import mask
from proxy.shadow.runreport import gate

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable
    from pathlib import Path

TOKEN = "Bearer seed-token-1"
KEY = "seed-key-77"


@dataclass
class Club:
    """A small club API on loopback.

    `seeded` changes the second item's price; `auth` answers /api/me only with
    the seed token; `delay` is added to every answer. `seen` keeps (method,
    path, headers) of every request.
    """

    name: str = "legacy"
    seeded: bool = False
    auth: bool = False
    delay: float = 0.0
    seen: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    runner: web.AppRunner | None = None
    url: str = ""

    async def start(self) -> Club:
        app = web.Application()
        app.router.add_get("/api/users/{id}", self.user)
        app.router.add_get("/api/items", self.items)
        app.router.add_get("/api/me", self.me)
        app.router.add_get("/api/echo", self.echo)
        app.router.add_route("*", "/{tail:.*}", self.other)
        app.middlewares.append(self.log)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        return self

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    @web.middleware
    async def log(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.seen.append((request.method, request.path_qs, dict(request.headers)))
        await asyncio.sleep(self.delay)
        response: web.StreamResponse = await handler(request)
        return response

    async def user(self, request: web.Request) -> web.Response:
        number = int(request.match_info["id"])
        return web.json_response({"id": number, "name": f"user {number}"})

    async def items(self, request: web.Request) -> web.Response:
        second = 25 if self.seeded else 20
        items = [{"id": 1, "price": 10}, {"id": 2, "price": second}]
        return web.json_response({"items": items, "total": 2})

    async def me(self, request: web.Request) -> web.Response:
        if self.auth and request.headers.get("Authorization") != TOKEN:
            return web.json_response({"error": "unauthorized"}, status=401)
        return web.json_response({"user": "seed"})

    async def echo(self, request: web.Request) -> web.Response:
        # Echoes the key it was sent: a report must still not show it.
        key = request.headers.get("X-Api-Key", "")
        return web.json_response({"key": key, "side": self.name})

    async def other(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"side": self.name}, status=201 if request.method == "POST" else 404
        )


@pytest.fixture
async def clubs() -> AsyncIterator[tuple[Club, Club]]:
    legacy, new = await Club().start(), await Club(name="new", seeded=True).start()
    yield legacy, new
    await legacy.close()
    await new.close()


def record(target: str, route: str | None, *, method: str = "GET", **headers: str) -> Recorded:
    pairs = (("Host", "club.example"), *((k.replace("_", "-"), v) for k, v in headers.items()))
    return Recorded(at=1765000000.0, route=route, method=method, target=target, headers=pairs)


RECORDS = [
    *(record(f"/api/users/{n}", "user-get") for n in range(6)),
    *(record(f"/api/items?page={n}", "items-list") for n in range(6)),
    *(record("/api/items", "items-create", method="POST") for _ in range(2)),
]


def capture(path: Path, records: Iterable[Recorded]) -> Path:
    path.write_bytes(b"".join(to_line(r) for r in records))
    return path


def har(path: Path, records: Iterable[Recorded]) -> Path:
    path.write_text(json.dumps(to_har(records), indent=2))
    return path


@dataclass
class Run:
    code: int
    out: str
    err: str


async def run(*argv: str) -> Run:
    parser = argparse.ArgumentParser()
    add_compare_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["compare", *argv])
    out, err = io.StringIO(), io.StringIO()
    code = await compare(args, out=out, err=err, terminal=False)
    return Run(code, out.getvalue(), err.getvalue())


def routes_of(directory: Path) -> dict[str, dict[str, Any]]:
    report = json.loads((directory / "report.json").read_text())
    return {route["id"]: route for route in report["routes"]}


async def test_a_capture_run_reports_every_route_and_fails_on_the_seeded_difference(
    clubs, tmp_path
) -> None:
    legacy, new = clubs
    source = capture(tmp_path / "capture.jsonl", RECORDS)
    found = await run(
        str(source), "--legacy", legacy.url, "--new", new.url, "--report", str(tmp_path / "r")
    )
    assert found.code == 1, found.err
    # The summary: a row per route, the gate, the top group with a concrete path.
    rows = {line.split()[0]: line.split() for line in found.out.splitlines()[2:5]}
    assert rows["user-get"][1:4] == ["6", "6", "0"]
    assert rows["user-get"][-2:] == ["collecting", "pass"]
    assert rows["items-list"][1:4] == ["6", "0", "6"]
    assert rows["items-list"][-1] == "FAIL"
    assert "changed:$.items[*].price  e.g. GET /api/items?page=" in found.out
    assert "at $.items[1].price" in found.out
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    run_info = report["run"]
    assert (run_info["requests"], run_info["replayed"]) == (14, 12)
    assert run_info["skipped"] == {"unsafe_method": 2}
    assert (run_info["legacy"], run_info["new"]) == (legacy.url, new.url)
    routes = {route["id"]: route for route in report["routes"]}
    assert list(routes) == ["user-get", "items-list", "items-create"]
    items = routes["items-list"]
    assert items["verdict"] == "collecting"  # the default bar: 1000 requests
    assert [g["signature"] for g in items["differences"]] == ["changed:$.items[*].price"]
    example = items["differences"][0]["examples"][0]
    assert [(d["path"], d["primary"], d["candidate"]) for d in example["differences"]] == [
        ("$.items[1].price", "20", "25")
    ]
    assert items["gate"] == {
        "threshold": 0.999,
        "passed": False,
        "reason": "match rate 0.000% < 99.900%",
    }
    assert set(items["latency"]) == {"legacy", "new"}
    assert items["latency"]["new"]["p50"] > 0
    assert routes["items-create"]["skipped"] == {"unsafe_method": 2}
    # No write was sent to either side.
    assert {method for method, _, _ in legacy.seen + new.seen} == {"GET"}
    page = (tmp_path / "r" / "report.html").read_text()
    ET.fromstring(page)
    for fetches in ("<script", "src=", "url(", "<link", "<img", "@import"):
        assert fetches not in page.lower()
    # The only URLs are the sides' names in the run's table, never fetched.
    for url in ("https://", "http://"):
        assert url not in page.replace(legacy.url, "").replace(new.url, "")
    assert '<span class="hl">' in page


@pytest.mark.parametrize(
    ("flags", "code"),
    [
        ([], 1),  # items-list matches 0% of the time
        (["--fail-under", "0"], 0),  # any rate passes
        (["--fail-under", "0.5"], 1),
        (["--only", "user-get"], 0),  # the route that matches, alone
        (["--only", "user-get", "--only", "items-list"], 1),
    ],
)
async def test_the_exit_code_gates_on_the_match_rate(clubs, tmp_path, flags, code) -> None:
    legacy, new = clubs
    source = capture(tmp_path / "capture.jsonl", RECORDS)
    found = await run(str(source), "--legacy", legacy.url, "--new", new.url, *flags)
    assert found.code == code, found.out + found.err


async def test_a_routes_file_gives_route_ids_rules_and_verdicts(clubs, tmp_path) -> None:
    legacy, new = clubs
    (tmp_path / "routes.yaml").write_text(
        "version: 1\n"
        f'upstreams: {{legacy: {{url: "{legacy.url}"}}}}\n'
        f'new: {{url: "{new.url}"}}\n'
        "default: legacy\n"
        "routes:\n"
        '  - {id: users, match: "GET /api/users/{id}", to: legacy,\n'
        "     shadow: {to: new, verdict: {min_requests: 5}}}\n"
        '  - {id: items, match: "GET /api/items", to: legacy,\n'
        '     shadow: {to: new, ignore: {json: ["$.items[*].price"]}, verdict: {min_requests: 5}}}\n'
    )
    # Route ids come from the table, not from the records.
    source = capture(tmp_path / "capture.jsonl", [*RECORDS[:12]])
    argv = ["--legacy", legacy.url, "--new", new.url, "--routes", str(tmp_path / "routes.yaml")]
    found = await run(str(source), *argv, "--report", str(tmp_path / "r"))
    assert found.code == 0, found.out + found.err
    routes = routes_of(tmp_path / "r")
    assert set(routes) == {"users", "items"}
    assert routes["items"]["matched"] == 6  # the price is ignored by the route's rule
    assert routes["items"]["verdict"] == "ready"
    assert routes["users"]["verdict"] == "ready"


async def test_har_input_gives_the_same_results(clubs, tmp_path) -> None:
    legacy, new = clubs
    sides = ["--legacy", legacy.url, "--new", new.url]
    lines = capture(tmp_path / "capture.jsonl", RECORDS)
    archive = har(tmp_path / "capture.har", RECORDS)
    from_lines = await run(str(lines), *sides, "--report", str(tmp_path / "a"))
    from_har = await run(str(archive), *sides, "--report", str(tmp_path / "b"))
    assert from_lines.code == from_har.code == 1

    def counts(route: dict[str, Any]) -> tuple[Any, ...]:
        return (
            route["matched"],
            route["mismatched"],
            route["skipped"],
            route["differences"][:1] and route["differences"][0]["signature"],
        )

    assert {k: counts(v) for k, v in routes_of(tmp_path / "a").items()} == {
        k: counts(v) for k, v in routes_of(tmp_path / "b").items()
    }


async def test_har_entries_without_a_route_are_grouped_by_method_and_path(clubs, tmp_path) -> None:
    legacy, new = clubs
    anonymous = [record("/api/items?page=1", None), record("/api/items?page=2", None)]
    archive = har(tmp_path / "browser.har", anonymous)
    found = await run(
        str(archive), "--legacy", legacy.url, "--new", new.url, "--report", str(tmp_path / "r")
    )
    assert found.code == 1
    assert list(routes_of(tmp_path / "r")) == ["GET /api/items"]


async def test_credentials_replace_the_captures_masks_and_never_reach_a_report(tmp_path) -> None:
    legacy, new = await Club().start(), await Club(name="new", auth=True).start()
    records = [
        *(record("/api/me", "me", Authorization=mask("Bearer production-token")) for _ in range(3)),
        record("/api/echo", "echo", X_Api_Key=mask("production-key")),
    ]
    source = capture(tmp_path / "capture.jsonl", records)
    sides = ["--legacy", legacy.url, "--new", new.url, "--fail-under", "0"]
    try:
        masked = await run(str(source), *sides, "--report", str(tmp_path / "masked"))
        real = await run(
            str(source),
            *sides,
            "--report",
            str(tmp_path / "real"),
            "--credential",
            f"Authorization={TOKEN}",
            "--credential",
            f"X-Api-Key={KEY}",
        )
    finally:
        await legacy.close()
        await new.close()
    # Sent with the mask, the new side refuses: 200 against 401.
    assert routes_of(tmp_path / "masked")["me"]["mismatched"] == 3
    assert "3 requests carry a redacted authorization value" in masked.err
    # With the credential both sides answer 200 alike.
    assert routes_of(tmp_path / "real")["me"]["matched"] == 3
    assert new.seen[-2][2]["Authorization"] == TOKEN
    assert new.seen[-1][2]["X-Api-Key"] == KEY
    assert "warning" not in real.err
    # The echo route differs (by side) so its example, with the key echoed, is reported.
    echo = routes_of(tmp_path / "real")["echo"]
    assert echo["mismatched"] == 1
    assert echo["differences"][0]["examples"]
    for name in ("report.json", "report.html"):
        text = (tmp_path / "real" / name).read_text()
        assert "seed-token-1" not in text
        assert KEY not in text
        assert mask(KEY) in text  # the echoed key, scrubbed to its mask
    assert "seed-token-1" not in real.out + real.err
    assert KEY not in real.out + real.err


async def test_the_new_side_can_be_an_in_process_app(tmp_path) -> None:
    async def user(request: web.Request) -> web.Response:
        found = {"side": "new", "handler": "get_user", "id": request.match_info["id"]}
        # The legacy side differs for user 7 only.
        return web.json_response({**found, "method": request.method if found["id"] != "7" else "?"})

    app = web.Application()
    app.router.add_get("/api/users/{id}", user)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    legacy = f"http://127.0.0.1:{runner.addresses[0][1]}"
    records = [record(f"/api/users/{n}", "user-get") for n in (1, 2, 3)]
    app_flags = ["--new-app", "tests.proxy.newapp_sample:create_app"]
    try:
        same = await run(
            str(capture(tmp_path / "a.jsonl", records)), "--legacy", legacy, *app_flags
        )
        seven = await run(
            str(capture(tmp_path / "b.jsonl", [*records, record("/api/users/7", "user-get")])),
            "--legacy",
            legacy,
            *app_flags,
            "--report",
            str(tmp_path / "r"),
        )
    finally:
        await runner.cleanup()
    assert same.code == 0, same.out + same.err
    assert "user-get  3         3      0" in same.out
    assert seven.code == 1
    route = routes_of(tmp_path / "r")["user-get"]
    assert [g["signature"] for g in route["differences"]] == ["changed:$.method"]
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["run"]["new"] == "app tests.proxy.newapp_sample:create_app"


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("garbage", "not a HAR file"),
        ("missing", "cannot read"),
        ("empty", "no requests in"),
        ("only", "--only nowhere: no request of this route"),
        ("down", "the legacy side at"),
        ("credential", "expected NAME=VALUE"),
        ("writes", "--include-writes is NOT SUPPORTED YET"),
        ("config-dir", "--config-dir goes with --new-app"),
        ("noise", "--noise 2.0: a share between 0 and 1"),
        ("routes", "routes.yaml"),
        ("factory", "cannot import module"),
    ],
)
async def test_usage_and_input_errors_exit_2_before_anything_is_sent(
    clubs, tmp_path, case, message
) -> None:
    legacy, new = clubs
    source = capture(tmp_path / "capture.jsonl", RECORDS)
    closed = await Club().start()
    await closed.close()
    (tmp_path / "garbage.jsonl").write_text("this is not json\n")
    (tmp_path / "empty.har").write_text('{"log": {"version": "1.2", "entries": []}}')
    (tmp_path / "routes.yaml").write_text("version: 1\nroutes: 3\n")
    sides = ["--legacy", legacy.url, "--new", new.url]
    argv = {
        "garbage": [str(tmp_path / "garbage.jsonl"), *sides],
        "missing": [str(tmp_path / "nowhere.jsonl"), *sides],
        "empty": [str(tmp_path / "empty.har"), *sides],
        "only": [str(source), *sides, "--only", "nowhere"],
        "down": [str(source), "--legacy", closed.url, "--new", new.url],
        "credential": [str(source), *sides, "--credential", "Authorization"],
        "writes": [str(source), *sides, "--include-writes", "postgresql://db/x"],
        "config-dir": [str(source), *sides, "--config-dir", str(tmp_path)],
        "noise": [str(source), *sides, "--noise", "2"],
        "routes": [str(source), *sides, "--routes", str(tmp_path / "routes.yaml")],
        "factory": [str(source), "--legacy", legacy.url, "--new-app", "no_such_module:create"],
    }[case]
    found = await run(*argv)
    assert found.code == 2
    assert message in found.err
    assert found.out == ""
    assert [s for s in legacy.seen + new.seen if s[1] != "/"] == []  # at most the probe


async def test_progress_lines_on_a_pipe(tmp_path) -> None:
    legacy, new = await Club(delay=0.03).start(), await Club(name="new").start()
    source = capture(
        tmp_path / "capture.jsonl", [record(f"/api/users/{n}", "u") for n in range(30)]
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        "compare",
        str(source),
        "--legacy",
        legacy.url,
        "--new",
        new.url,
        "--concurrency",
        "1",
        "--progress-every",
        "0.1",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), 60)
    finally:
        await legacy.close()
        await new.close()
    assert process.returncode == 0, err.decode()
    lines = err.decode().splitlines()
    assert "\r" not in err.decode()  # no bar off a terminal
    periodic = [line for line in lines if line.startswith("compare: ") and "done" not in line]
    assert len(periodic) >= 3  # about a second of requests, a line every 0.1 s
    assert all("requests" in line and "/s" in line and "ETA" in line for line in periodic)
    assert lines[-1].startswith("compare: done 30/30 requests")
    assert "0 mismatches" in lines[-1]
    assert out.decode().splitlines()[2].split()[:4] == ["u", "30", "30", "0"]


async def test_a_terminal_gets_a_bar_redrawn_in_place() -> None:
    stream = io.StringIO()
    progress = Progress(total=4, stream=stream, terminal=True)
    progress.start()
    for outcome in (Outcome.MATCH, Outcome.MISMATCH):
        progress.result(outcome)
    await asyncio.sleep(0.3)
    await progress.close()
    shown = stream.getvalue()
    assert shown.startswith("\r\x1b[K[##########----------]  2/4 requests")
    assert "1 mismatches" in shown
    assert shown.endswith("\n")


def route_counts(**counts: Any) -> dict[str, Any]:
    route: dict[str, Any] = {"matched": 0, "mismatched": 0, "errors": 0, "skipped": {}}
    route.update(min_match=0.99, **counts)
    judged = route["matched"] + route["mismatched"]
    route["match_rate"] = route["matched"] / judged if judged else None
    return route


@pytest.mark.parametrize(
    ("route", "fail_under", "passed"),
    [
        (route_counts(matched=99, mismatched=1), None, True),  # 99% against min_match 0.99
        (route_counts(matched=98, mismatched=2), None, False),
        (route_counts(matched=98, mismatched=2), 0.98, True),  # --fail-under wins
        # Errors are not in the match rate, but they may not pass the same bar.
        (route_counts(matched=100, errors=1), None, True),
        (route_counts(matched=100, errors=5), None, False),
        (route_counts(matched=100, skipped={"primary_error": 5}), None, False),
        (route_counts(errors=3), None, False),  # every request failed on a side
        (route_counts(skipped={"unsafe_method": 3}), None, True),  # nothing to compare
    ],
)
def test_the_gate(route: dict[str, Any], fail_under: float | None, passed: bool) -> None:
    assert gate(route, fail_under)["passed"] is passed
