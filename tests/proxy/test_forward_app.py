"""The proxy app as a whole: routing to targets, a reload rebuilding a pool,
per-route timeouts, the access log and metrics. Reload under traffic, on both
request paths, is tests/proxy/test_reload_traffic.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Any

import pytest
from aiohttp import web

from proxy.serving.app import PROXY, create_app
from proxy.telemetry.accesslog import ACCESS_LOGGER
from tests.proxy import forward_support
from tests.proxy.echo_upstream import EchoUpstream
from tests.proxy.forward_support import TIMEOUT

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from aiohttp.test_utils import TestClient
    from pytest_aiohttp import AiohttpClient, AiohttpServer


def routes_text(legacy: str, other: str, *, orders_to: str = "legacy", extra: str = "") -> str:
    return (
        "version: 1\n"
        "upstreams:\n"
        f'  legacy: {{url: "{legacy}"}}\n'
        f'  other: {{url: "{other}", read_timeout: 5s}}\n'
        "default: legacy\n"
        "routes:\n"
        f'  - {{id: orders, match: "GET /api/orders/{{id}}", to: {orders_to}}}\n'
        '  - {id: slow, match: "GET /slow", to: legacy, timeouts: {read: 300ms}}\n'
        f"{extra}"
    )


# Two distinct echo upstreams, from the one fixture function.
legacy = forward_support.upstream
other = forward_support.upstream


@pytest.fixture
def routes_file(tmp_path: Path, legacy: EchoUpstream, other: EchoUpstream) -> Path:
    path = tmp_path / "routes.yaml"
    path.write_text(routes_text(legacy.url, other.url), encoding="utf-8")
    return path


@pytest.fixture
async def client(routes_file: Path, aiohttp_client: AiohttpClient) -> TestClient[Any, Any]:
    app = create_app(routes_path=routes_file, poll_interval=0.05, reload_on_sighup=False)
    return await aiohttp_client(app, auto_decompress=False)


async def wait_until(predicate: Callable[[], bool]) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), TIMEOUT)


async def test_routes_send_each_request_to_its_target(
    client: TestClient[Any, Any], legacy: EchoUpstream
) -> None:
    async with client.get("/api/orders/7") as response:
        assert response.status == 200
    async with client.get("/anything/else?q=1") as response:
        assert response.status == 200
    assert [r.target for r in legacy.received] == [b"/api/orders/7", b"/anything/else?q=1"]


async def test_route_timeout_overrides_the_upstream_one(client: TestClient[Any, Any]) -> None:
    async with client.get("/slow?delay=3") as response:
        assert response.status == 504


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


async def test_reload_that_changes_an_upstream_rebuilds_its_pool(
    client: TestClient[Any, Any], routes_file: Path, legacy: EchoUpstream, other: EchoUpstream
) -> None:
    async with client.get("/x") as response:
        assert response.status == 200
    moved = await EchoUpstream().start()
    try:
        _write_atomically(routes_file, routes_text(moved.url, other.url))
        proxy = client.app[PROXY] if client.app is not None else None
        assert proxy is not None
        await wait_until(lambda: proxy.pools.current["legacy"].upstream.url.port == moved.port)
        async with client.get("/y") as response:
            assert response.status == 200
        assert [r.target for r in moved.received] == [b"/y"]
        assert [r.target for r in legacy.received] == [b"/x"]
        # The retired pool closed its keep-alive connection to the old address.
        await wait_until(lambda: legacy.closed == legacy.accepted)
    finally:
        await moved.close()


async def test_access_log_has_one_json_ready_line_per_request_without_secrets(
    client: TestClient[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    headers = {"Authorization": "Bearer s3cret", "X-Request-ID": "req-42"}
    async with client.get("/api/orders/9?token=abc&page=2", headers=headers) as response:
        assert response.status == 200
    records = [r for r in caplog.records if r.name == ACCESS_LOGGER]
    assert len(records) == 1
    entry = records[0].access  # type: ignore[attr-defined]
    assert entry["request_id"] == "req-42"
    assert entry["route"] == "orders"
    assert entry["target"] == "legacy"
    assert entry["method"] == "GET"
    assert entry["path"] == "/api/orders/9"
    assert entry["query"] == "token=[redacted]&page=2"
    assert entry["status"] == 200
    assert entry["bytes"] > 0
    assert entry["duration_ms"] >= 0
    assert "s3cret" not in json.dumps(entry)
    assert "abc" not in json.dumps(entry)


async def test_metrics_count_requests_by_route_target_method_status(
    client: TestClient[Any, Any], unused_tcp_port_factory: Any, tmp_path: Path
) -> None:
    for _ in range(3):
        async with client.get("/api/orders/1") as response:
            assert response.status == 200
    async with client.get("/slow?delay=3") as response:
        assert response.status == 504
    assert client.app is not None
    text = client.app[PROXY].metrics.render().decode()
    assert (
        'club_proxy_requests_total{method="GET",route="orders",status="200",target="legacy"} 3.0'
        in text
    )
    assert 'club_proxy_upstream_errors_total{kind="timeout",target="legacy"} 1.0' in text
    assert 'club_proxy_route_reloads_total{result="failure"} 0.0' in text
    assert "club_proxy_request_duration_seconds_bucket" in text
    assert 'club_proxy_upstream_requests_active{upstream="legacy"} 0.0' in text
    assert 'club_proxy_upstream_connections_limit{upstream="legacy"} 100.0' in text


async def test_pool_queueing_is_visible_in_metrics(
    tmp_path: Path, legacy: EchoUpstream, aiohttp_client: AiohttpClient
) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(
        "version: 1\nupstreams:\n"
        f'  legacy: {{url: "{legacy.url}", max_connections: 2, connect_timeout: 20s}}\n'
        "default: legacy\nroutes: []\n",
        encoding="utf-8",
    )
    client = await aiohttp_client(create_app(routes_path=path, reload_on_sighup=False))
    assert client.app is not None
    metrics = client.app[PROXY].metrics
    slow = [asyncio.create_task(client.get("/slow?delay=1")) for _ in range(5)]
    try:
        await wait_until(
            lambda: (
                'club_proxy_upstream_requests_active{upstream="legacy"} 5.0'
                in metrics.render().decode()
            )
        )
        # Only two reached the upstream; three wait for a pooled connection
        # (connect_timeout covers that wait, hence 20s here).
        assert len(legacy.received) <= 2
    finally:
        for response in await asyncio.gather(*slow):
            assert response.status == 200
            response.release()


async def test_canary_sends_its_share_to_the_canary_target_sticky_per_client(
    tmp_path: Path, legacy: EchoUpstream, other: EchoUpstream, aiohttp_client: AiohttpClient
) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(
        routes_text(
            legacy.url,
            other.url,
            extra='  - id: reg\n    match: "POST /api/reg"\n    to: legacy\n'
            '    canary: {to: other, weight: 0.5, sticky: "header:X-User"}\n',
        ),
        encoding="utf-8",
    )
    client = await aiohttp_client(create_app(routes_path=path, reload_on_sighup=False))
    sides: dict[str, set[int]] = {}
    for user in range(40):
        for _ in range(3):
            async with client.post("/api/reg", headers={"X-User": f"u{user}"}) as response:
                assert response.status == 200
                port = int(json.loads(await response.read())["port"])
                sides.setdefault(f"u{user}", set()).add(port)
    # Every client stays on one side; both sides get some clients.
    assert all(len(ports) == 1 for ports in sides.values())
    assert {next(iter(p)) for p in sides.values()} == {legacy.port, other.port}


async def test_new_as_a_url_is_forwarded_like_an_upstream(
    tmp_path: Path, legacy: EchoUpstream, other: EchoUpstream, aiohttp_client: AiohttpClient
) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(
        f'version: 1\nupstreams: {{legacy: {{url: "{legacy.url}"}}}}\n'
        f'new: {{url: "{other.url}"}}\ndefault: legacy\n'
        'routes: [{id: moved, match: "GET /api/moved", to: new}]\n',
        encoding="utf-8",
    )
    client = await aiohttp_client(create_app(routes_path=path, reload_on_sighup=False))
    async with client.get("/api/moved?x=1") as response:
        assert response.status == 200
    async with client.get("/api/other") as response:
        assert response.status == 200
    assert [r.target for r in other.received] == [b"/api/moved?x=1"]
    assert [r.target for r in legacy.received] == [b"/api/other"]


async def test_websocket_upgrade_is_relayed_through_the_app(
    tmp_path: Path, aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient
) -> None:
    async def ws_echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("v1",))
        await ws.prepare(request)
        async for message in ws:
            await ws.send_str(f"echo:{message.data}:{request.headers.get('Via')}")
        return ws

    upstream_app = web.Application()
    upstream_app.router.add_get("/ws", ws_echo)
    upstream = await aiohttp_server(upstream_app)
    path = tmp_path / "routes.yaml"
    path.write_text(
        f'version: 1\nupstreams: {{legacy: {{url: "{upstream.make_url("")}"}}}}\n'
        'default: legacy\nroutes: [{id: ws, match: "GET /ws", to: legacy}]\n',
        encoding="utf-8",
    )
    client = await aiohttp_client(create_app(routes_path=path, reload_on_sighup=False))
    async with client.ws_connect("/ws", protocols=("v2", "v1")) as ws:
        assert ws.protocol == "v1"
        await ws.send_str("hi")
        assert await ws.receive_str() == "echo:hi:1.1 club-proxy"


async def test_to_new_is_answered_in_process_with_the_new_apps_resources(
    tmp_path: Path, legacy: EchoUpstream, aiohttp_client: AiohttpClient
) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(
        f'version: 1\nupstreams: {{legacy: {{url: "{legacy.url}"}}}}\n'
        'new: {app: "tests.proxy.newapp_sample:create_app"}\n'
        "default: legacy\n"
        "routes:\n"
        '  - {id: user-get, match: "GET /api/users/{id}", to: new}\n'
        '  - {id: state, match: "GET /api/state", to: new}\n'
        '  - {id: reg, match: "POST /api/events/{id}/registrations", to: new}\n',
        encoding="utf-8",
    )
    client = await aiohttp_client(create_app(routes_path=path, reload_on_sighup=False))
    async with client.get("/api/users/42", headers={"X-Request-ID": "rid-new"}) as response:
        assert response.status == 200
        assert response.headers["X-Request-ID"] == "rid-new"
        assert await response.json() == {
            "side": "new",
            "handler": "get_user",
            "id": "42",
            "method": "GET",
        }
    async with client.get("/api/state") as response:
        # The new app's cleanup_ctx ran before it served.
        assert (await response.json())["state"]["started"] is True
    async with client.post("/api/events/7/registrations", data=b"x" * 70_000) as response:
        assert response.status == 201
        assert (await response.json())["body_size"] == 70_000
    # A `to: new` path the new app does not serve is the new app's 404, not legacy's.
    async with client.post("/api/events/abc/registrations") as response:
        assert response.status == 404
    assert legacy.received == []
