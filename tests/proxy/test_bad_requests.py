"""Requests aiohttp's parser rejects get the proxy's JSON error and one log line.

The proxy is served by `ProxyAppRunner`, as `club-proxy run` serves it. Each
malformed request must get a JSON `{"error", "request_id"}` 400 (no parser
details, no `Server`), the connection must be closed after it (nothing
pipelined behind a framing error is read), and the log must hold one warning,
never an ERROR record with a traceback (aiohttp's default on `aiohttp.server`).
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

import pytest
from aiohttp import web

from proxy.serving.app import PROXY
from tests.proxy import forward_support
from tests.proxy.forward_support import RawClient, request, serve_proxy

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from tests.proxy.echo_upstream import EchoUpstream

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: proxy.test\r\n\r\n"
CHUNKED_HEAD = b"POST /echo HTTP/1.1\r\nHost: proxy.test\r\nTransfer-Encoding: chunked\r\n\r\n"

proxy_port = forward_support.proxy_port
raw = forward_support.raw
upstream = forward_support.upstream


MALFORMED = {
    "bad-request-line": b"GARBAGE\r\n\r\n",
    "http-over-nothing": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
    "cl-and-te": (
        b"POST /echo HTTP/1.1\r\nHost: proxy.test\r\nContent-Length: 6\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "bad-chunk-size": CHUNKED_HEAD + b"zz\r\nhello\r\n0\r\n\r\n",
    "oversized-header": request(headers=[("X-Big", "a" * 9000)]),
    "oversized-request-line": request(target="/" + "a" * 9000),
    "nul-in-path": b"GET /ec\x00ho HTTP/1.1\r\nHost: proxy.test\r\n\r\n",
    "lower-case-method": request("brew", "/pot"),
}


@pytest.mark.parametrize("attack", MALFORMED.values(), ids=MALFORMED.keys())
async def test_malformed_request_gets_json_400_one_warning_and_a_closed_connection(
    raw: RawClient, upstream: EchoUpstream, caplog: pytest.LogCaptureFixture, attack: bytes
) -> None:
    caplog.set_level(logging.DEBUG)
    await raw.send(attack + SMUGGLED)
    response = await raw.read_response()
    assert response.status == 400
    assert response.header("Content-Type") == "application/json"
    assert response.header("Server") is None
    body = json.loads(response.body)
    assert body == {"error": "bad request", "request_id": response.header("X-Request-ID")}
    rest = await raw.rest_until_close()
    assert rest == b""  # closed, and the pipelined request got no answer
    assert not any(r.target == b"/smuggled" for r in upstream.received)
    warnings = [r for r in caplog.records if r.getMessage() == "proxy.bad_request"]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    assert warnings[0].exc_info is None
    assert getattr(warnings[0], "request_id", None) == body["request_id"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    # Counted and logged like any answer, as nginx logs its 400s.
    access = [r.access for r in caplog.records if r.getMessage() == "proxy.access"]  # type: ignore[attr-defined]
    assert access == [
        {
            "request_id": body["request_id"],
            "route": "(rejected)",
            "target": "(proxy)",
            "method": "-",
            "path": "",
            "query": "",
            "status": 400,
            "bytes": len(response.body),
            "duration_ms": 0.0,
        }
    ]


async def test_a_malformed_request_on_a_kept_alive_connection_closes_it(raw: RawClient) -> None:
    await raw.send(request("GET", "/echo"))
    first = await raw.read_response()
    assert first.status == 200
    await raw.send(b"GARBAGE\r\n\r\n")
    second = await raw.read_response()
    assert second.status == 400
    assert json.loads(second.body)["error"] == "bad request"
    assert await raw.rest_until_close() == b""


@pytest.fixture
async def failing_port() -> AsyncIterator[int]:
    async def broken(_request: web.Request) -> web.Response:
        msg = "a bug in a handler"
        raise RuntimeError(msg)

    app = web.Application()
    app.router.add_get("/", broken)
    runner, port = await serve_proxy(app)
    yield port
    await runner.cleanup()


async def test_an_escaped_handler_exception_is_a_json_500_with_its_traceback_logged(
    failing_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = await RawClient.connect(failing_port)
    try:
        await client.send(request("GET", "/", headers=[("X-Request-ID", "rid-1")]))
        response = await client.read_response()
    finally:
        await client.close()
    assert response.status == 500
    assert json.loads(response.body) == {"error": "internal server error", "request_id": "rid-1"}
    errors = [r for r in caplog.records if r.getMessage() == "proxy.internal_error"]
    assert len(errors) == 1
    assert errors[0].exc_info is not None
    assert isinstance(errors[0].exc_info[1], RuntimeError)


async def test_rejected_requests_are_counted_under_their_own_route(
    upstream: EchoUpstream, tmp_path: Path
) -> None:
    app = forward_support.proxy_app(tmp_path, upstream.url)
    runner, port = await serve_proxy(app)
    try:
        for _ in range(2):
            client = await RawClient.connect(port)
            try:
                await client.send(b"GARBAGE\r\n\r\n")
                assert (await client.read_response()).status == 400
            finally:
                await client.close()
        text = app[PROXY].metrics.render().decode()
    finally:
        await runner.cleanup()
    assert (
        'club_proxy_requests_total{method="OTHER",route="(rejected)",status="400",'
        'target="(proxy)"} 2.0'
    ) in text


async def test_a_refused_target_form_gets_an_access_line(
    raw: RawClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    await raw.send(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
    response = await raw.read_response()
    assert response.status == 405
    access = [r.access for r in caplog.records if r.getMessage() == "proxy.access"]  # type: ignore[attr-defined]
    assert access == [
        {
            "request_id": response.header("X-Request-ID"),
            "route": "(rejected)",
            "target": "(proxy)",
            "method": "CONNECT",
            "path": "example.com:443",
            "query": "",
            "status": 405,
            "bytes": len(response.body),
            "duration_ms": 0.0,
        }
    ]
