"""The fast access log (buffered JSON lines) and counter-based request ids."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import time
from typing import TYPE_CHECKING, Any

from proxy.core.headers import request_id_from
from proxy.serving.app import create_app
from proxy.telemetry.accesslog import AccessLog
from tests.proxy.forward_support import TIMEOUT

if TYPE_CHECKING:
    from pathlib import Path

    from pytest_aiohttp import AiohttpClient

    from tests.proxy.echo_upstream import EchoUpstream

from tests.proxy import forward_support

upstream = forward_support.upstream


def _entry(**overrides: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "request_id": "rid",
        "route": "r",
        "target": "legacy",
        "method": "GET",
        "raw_target": "/a?token=abc&page=2",
        "status": 200,
        "body_bytes": 5,
        "seconds": 0.0012345,
    }
    entry.update(overrides)
    return entry


def _lines(buffer: io.BytesIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_generated_request_ids_are_unique_valid_and_32_hex() -> None:
    ids = [request_id_from(None) for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    for rid in ids[:100]:
        assert len(rid) == 32
        int(rid, 16)
        # A generated id is itself a valid inbound id, so it is kept downstream.
        assert request_id_from(rid) == rid


def test_a_forked_child_draws_its_own_id_prefix() -> None:
    parent = request_id_from(None)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write_end, request_id_from(None).encode())
        os._exit(0)
    os.close(write_end)
    # Poll rather than block: a child stuck in an at-fork hook must not hang the run.
    deadline = time.monotonic() + TIMEOUT
    while (status := os.waitpid(pid, os.WNOHANG))[0] == 0:
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            break
        time.sleep(0.01)
    child = os.read(read_end, 64).decode()
    os.close(read_end)
    assert status == (pid, 0)
    assert len(child) == 32
    assert child[:16] != parent[:16]


async def test_stream_access_log_writes_one_redacted_json_line_per_request() -> None:
    buffer = io.BytesIO()
    log = AccessLog(stream=buffer, flush_interval=0.01)
    log.log(**_entry())
    log.log(**_entry(request_id="rid2", aborted="client", status=499))
    # Buffered until the flush timer fires.
    assert buffer.getvalue() == b""

    async def flushed() -> None:
        while buffer.getvalue().count(b"\n") < 2:
            await asyncio.sleep(0.01)

    await asyncio.wait_for(flushed(), TIMEOUT)
    first, second = _lines(buffer)
    assert first["event"] == "proxy.access"
    assert first["logger"] == "proxy.access"
    assert first["level"] == "info"
    assert first["time"].endswith("Z")
    assert first["path"] == "/a"
    assert first["query"] == "token=[redacted]&page=2"
    assert first["duration_ms"] == 1.234
    assert "aborted" not in first
    assert "abc" not in buffer.getvalue().decode()
    assert second["aborted"] == "client"
    assert second["status"] == 499


def test_stream_access_log_flushes_by_size_and_on_close() -> None:
    buffer = io.BytesIO()
    log = AccessLog(stream=buffer, buffer_size=1000, flush_interval=60)
    for _ in range(3):
        # No running loop here: each line is written at once.
        log.log(**_entry())
    assert len(_lines(buffer)) == 3


async def test_stream_access_log_flushes_when_the_buffer_is_full_and_at_close() -> None:
    buffer = io.BytesIO()
    log = AccessLog(stream=buffer, buffer_size=1000, flush_interval=60)
    for _ in range(6):
        log.log(**_entry())
    full = len(_lines(buffer))
    # A line is about 250 bytes: four fill the buffer, the rest wait.
    assert 0 < full < 6
    log.close()
    assert len(_lines(buffer)) == 6


async def test_broken_stream_counts_lost_lines_and_does_not_raise() -> None:
    buffer = io.BytesIO()
    buffer.close()
    log = AccessLog(stream=buffer)
    log.log(**_entry())
    log.close()
    assert log.write_errors == 1


async def test_off_writes_nothing() -> None:
    log = AccessLog.off()
    log.log(**_entry())
    log.close()
    assert log.write_errors == 0


async def test_the_app_writes_its_access_lines_to_the_given_log(
    tmp_path: Path, upstream: EchoUpstream, aiohttp_client: AiohttpClient
) -> None:
    buffer = io.BytesIO()
    path = tmp_path / "routes.yaml"
    path.write_text(
        f'version: 1\nupstreams: {{legacy: {{url: "{upstream.url}"}}}}\n'
        'default: legacy\nroutes: [{id: orders, match: "GET /api/orders/{id}", to: legacy}]\n',
        encoding="utf-8",
    )
    access = AccessLog(stream=buffer)
    app = create_app(routes_path=path, reload_on_sighup=False, access_log=access)
    client = await aiohttp_client(app)
    async with client.get("/api/orders/3?session=s3cret", headers={"X-Request-ID": "r-1"}) as r:
        assert r.status == 200
    access.flush()
    (line,) = _lines(buffer)
    assert line["request_id"] == "r-1"
    assert line["route"] == "orders"
    assert line["query"] == "session=[redacted]"
    assert line["bytes"] > 0
