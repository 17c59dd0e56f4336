"""The access log's `bytes` is the body actually sent, whoever answered.

Pass-through answers count what they relay; every other answer (in-process,
the proxy's own errors and refusals) is written by the proxy before it logs,
so its line carries the body length too, and 0 when no body goes out (HEAD).
"""

from __future__ import annotations

import asyncio
import io
import json
from typing import TYPE_CHECKING, Any

import pytest

from proxy.serving.app import create_app
from proxy.telemetry.accesslog import AccessLog
from tests.proxy import forward_support
from tests.proxy.forward_support import TIMEOUT
from tests.proxy.newapp_sample import STREAMED

if TYPE_CHECKING:
    from aiohttp import ClientResponse
    from aiohttp.test_utils import TestClient
    from pytest_aiohttp import AiohttpClient

    from tests.proxy.echo_upstream import EchoUpstream

upstream = forward_support.upstream


class Lines:
    """The access log of one proxy, read back as dicts."""

    def __init__(self) -> None:
        self.buffer = io.BytesIO()
        self.log = AccessLog(stream=self.buffer)

    async def wait_for(self, request_id: str) -> dict[str, Any]:
        """The line of `request_id`, once the proxy has written it."""

        async def poll() -> dict[str, Any]:
            while True:
                self.log.flush()
                for raw in self.buffer.getvalue().splitlines():
                    line: dict[str, Any] = json.loads(raw)
                    if line["request_id"] == request_id:
                        return line
                await asyncio.sleep(0.01)

        return await asyncio.wait_for(poll(), TIMEOUT)


@pytest.fixture
def lines() -> Lines:
    return Lines()


@pytest.fixture
async def client(
    tmp_path: Any,
    upstream: EchoUpstream,
    lines: Lines,
    aiohttp_client: AiohttpClient,
    unused_tcp_port_factory: Any,
) -> TestClient[Any, Any]:
    dead = f"http://127.0.0.1:{unused_tcp_port_factory()}"
    path = tmp_path / "routes.yaml"
    path.write_text(
        f'version: 1\nupstreams: {{legacy: {{url: "{upstream.url}"}}, dead: {{url: "{dead}"}}}}\n'
        'new: {app: "tests.proxy.newapp_sample:create_app"}\n'
        "default: legacy\n"
        "routes:\n"
        '  - {id: user-get, match: "GET /api/users/{id}", to: new}\n'
        '  - {id: stream, match: "GET /api/stream", to: new}\n'
        '  - {id: gone, match: "/api/gone", to: dead}\n',
        encoding="utf-8",
    )
    app = create_app(routes_path=path, reload_on_sighup=False, access_log=lines.log)
    return await aiohttp_client(app)


async def _body_and_line(
    lines: Lines, response: ClientResponse, request_id: str
) -> tuple[bytes, dict[str, Any]]:
    body = await response.read()
    return body, await lines.wait_for(request_id)


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/api/users/7", 200),  # in-process JSON
        ("GET", "/api/stream", 200),  # in-process, streamed by its handler
        ("GET", "/api/gone", 502),  # the proxy's error: upstream unreachable
        ("TRACE", "/api/users/7", 405),  # the proxy's refusal
        ("GET", "/echo", 200),  # pass-through, for comparison
    ],
)
async def test_bytes_is_the_body_sent(
    client: TestClient[Any, Any], lines: Lines, method: str, path: str, status: int
) -> None:
    rid = f"rid-{method}-{status}"
    async with client.request(method, path, headers={"X-Request-ID": rid}) as response:
        assert response.status == status
        assert response.headers["X-Request-ID"] == rid  # whoever answered
        body, line = await _body_and_line(lines, response, rid)
    assert len(body) > 0
    assert line["status"] == status
    assert line["bytes"] == len(body)
    assert "aborted" not in line


async def test_a_streamed_in_process_answer_counts_every_write(
    client: TestClient[Any, Any], lines: Lines
) -> None:
    async with client.get("/api/stream", headers={"X-Request-ID": "rid-s"}) as response:
        body, line = await _body_and_line(lines, response, "rid-s")
    assert body == b"".join(STREAMED)
    assert line["bytes"] == len(body)


async def test_an_error_answer_to_head_sends_and_counts_no_body(
    client: TestClient[Any, Any], lines: Lines
) -> None:
    async with client.head("/api/gone", headers={"X-Request-ID": "rid-h"}) as response:
        assert response.status == 502
        body, line = await _body_and_line(lines, response, "rid-h")
    assert body == b""
    assert line["bytes"] == 0
