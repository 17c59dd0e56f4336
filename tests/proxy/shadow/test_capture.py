"""Captures through the proxy: sampled exchanges on disk, secrets masked, rotation, a full disk.

Real sockets on both request paths (the proxy served as `club-proxy run`
does), a real primary on loopback; the file is read back with the same
reader `club-proxy compare` uses.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Any

import pytest

from proxy.__main__ import main
from proxy.core.state import PROXY
from proxy.shadow.records import from_line, read_records
from tests.proxy.forward_support import RawClient, request
from tests.proxy.shadow.test_live_shadow import candidate, legacy, serve, write_routes

if TYPE_CHECKING:
    from pathlib import Path

    from tests.proxy.shadow.sides import Side
    from tests.proxy.shadow.test_live_shadow import Served

__all__ = ["candidate", "legacy", "serve"]  # fixtures, shared with test_live_shadow

paths = pytest.mark.parametrize("fast_lane", [True, False], ids=["fast-lane", "aiohttp-path"])
SECRET = "seed-token-1"


def capture_routes(tmp_path: Path, legacy: Side, candidate: Side, capture: str) -> Path:
    extra = f'  - {{id: cap, match: "GET,POST /api/cap", to: legacy, capture: {capture}}}\n'
    return write_routes(tmp_path, legacy, candidate, "{to: cand}", extra)


async def send(served: Served, count: int, *, method: str = "GET", body: bytes = b"") -> None:
    client = await RawClient.connect(served.port)
    try:
        for n in range(count):
            headers = [
                ("Authorization", f"Bearer {SECRET}"),
                ("Cookie", f"sid={SECRET}; theme=dark"),
            ]
            if body:
                headers.append(("Content-Type", "application/json"))
            await client.send(
                request(method, f"/api/cap?page={n}&token={SECRET}", headers=headers, body=body)
            )
            assert (await client.read_response()).status == 200
    finally:
        await client.close()


async def written(
    served: Served, count: int, outcome: str = "written"
) -> dict[tuple[str, str], int]:
    shadow = served.app[PROXY].shadow
    assert shadow is not None
    writer = shadow.capture
    assert writer is not None
    for _ in range(300):
        if writer.counts.get(("cap", outcome), 0) >= count:
            return dict(writer.counts)
        await asyncio.sleep(0.02)
    msg = f"only {writer.counts} after waiting"
    raise AssertionError(msg)


@paths
async def test_sampled_exchanges_are_written_with_secrets_masked(
    tmp_path: Path, legacy: Side, candidate: Side, serve: Any, fast_lane: bool
) -> None:
    # The side echoes the target (with the token) at $.path: that is masked too.
    capture = (
        "{sample: 1.0, file: caps/cap.jsonl,"
        ' redact: {query: [token], json: ["$.items[*].name", "$.path"]}}'
    )
    served = await serve(capture_routes(tmp_path, legacy, candidate, capture), fast_lane=fast_lane)
    await send(served, 4)
    assert await written(served, 4) == {("cap", "written"): 4}
    raw = (tmp_path / "caps" / "cap.jsonl").read_bytes()
    assert SECRET not in raw.decode()
    records = list(read_records(tmp_path / "caps" / "cap.jsonl"))
    assert [r.route for r in records] == ["cap"] * 4
    first = records[0]
    assert first.method == "GET"
    assert first.target.startswith("/api/cap?page=0&token=redacted%3A")
    headers = dict(first.headers)
    assert headers["Authorization"].startswith("redacted:")
    # Cookie names kept, every value masked.
    assert [c.strip().split("=")[0] for c in headers["Cookie"].split(";")] == ["sid", "theme"]
    assert "dark" not in headers["Cookie"]
    # A stable mask: the same secret, the same mask, on every record.
    assert len({dict(r.headers)["Authorization"] for r in records}) == 1
    assert first.answer is not None
    assert first.answer.status == 200
    assert first.answer.latency > 0
    items = json.loads(first.answer.body)["items"]
    assert all(item["name"].startswith("redacted:") for item in items)
    assert items[0]["id"] == 0


async def test_a_request_body_read_whole_is_captured(
    tmp_path: Path, legacy: Side, candidate: Side, serve: Any
) -> None:
    capture = '{sample: 1.0, file: cap.jsonl, redact: {json: ["$.password"]}}'
    served = await serve(capture_routes(tmp_path, legacy, candidate, capture), fast_lane=True)
    await send(served, 1, method="POST", body=b'{"user": "anna", "password": "hunter2"}')
    await written(served, 1)
    [record] = read_records(tmp_path / "cap.jsonl")
    assert record.method == "POST"
    body = json.loads(record.body)
    assert body["user"] == "anna"
    assert body["password"].startswith("redacted:")
    assert not record.body_truncated


@paths
async def test_the_file_rotates_at_max_size_and_no_line_is_split(
    tmp_path: Path, legacy: Side, candidate: Side, serve: Any, fast_lane: bool
) -> None:
    served = await serve(
        capture_routes(
            tmp_path, legacy, candidate, "{sample: 1.0, file: cap.jsonl, max_size: 4KiB}"
        ),
        fast_lane=fast_lane,
    )
    for sent in range(1, 7):  # one record per batch, so rotation is checked between them
        await send(served, 1)
        await written(served, sent)
    current, rotated = tmp_path / "cap.jsonl", tmp_path / "cap.jsonl.1"
    assert rotated.exists()
    assert current.stat().st_size <= 4096
    for path in (current, rotated):
        for line in path.read_bytes().splitlines():
            assert from_line(line).route == "cap"


@paths
async def test_a_full_disk_stops_capturing_never_serving(  # noqa: PLR0917 (fixtures)
    tmp_path: Path,
    legacy: Side,
    candidate: Side,
    serve: Any,
    fast_lane: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    (tmp_path / "cap.jsonl").symlink_to("/dev/full")  # every write: ENOSPC
    served = await serve(
        capture_routes(tmp_path, legacy, candidate, "{sample: 1.0, file: cap.jsonl}"),
        fast_lane=fast_lane,
    )
    with caplog.at_level(logging.WARNING, logger="proxy.shadow.capture"):
        for _ in range(3):
            await send(served, 2)
        counts = await written(served, 6, outcome="error")
    assert counts == {("cap", "error"): 6}
    failures = [r for r in caplog.records if r.getMessage() == "proxy.capture_failed"]
    assert len(failures) == 1


async def test_a_capture_exports_to_har_and_reads_back(
    tmp_path: Path, legacy: Side, candidate: Side, serve: Any
) -> None:
    served = await serve(
        capture_routes(tmp_path, legacy, candidate, "{sample: 1.0, file: cap.jsonl}"),
        fast_lane=True,
    )
    await send(served, 3)
    await written(served, 3)
    har = tmp_path / "cap.har"
    code = await asyncio.to_thread(
        main, ["capture", "export", str(tmp_path / "cap.jsonl"), "--har", str(har)]
    )
    assert code == 0
    assert json.loads(har.read_text())["log"]["version"] == "1.2"
    captured = list(read_records(tmp_path / "cap.jsonl"))
    assert list(read_records(har)) == captured
    assert (
        await asyncio.to_thread(
            main, ["capture", "export", str(tmp_path / "nope"), "--har", str(har)]
        )
        == 2
    )
