"""The admin API: health, readiness, the active routes, metrics, and its access rules."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from aiohttp import web

from proxy.serving.admin import AdminBindError, check_admin_binding, create_admin_app, is_loopback
from proxy.serving.app import PROXY, create_app
from tests.proxy.echo_upstream import EchoUpstream

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from aiohttp.test_utils import TestClient
    from pytest_aiohttp import AiohttpClient

TOKEN = "t0ken-for-tests"


@pytest.fixture
async def upstream() -> AsyncIterator[EchoUpstream]:
    echo = await EchoUpstream().start()
    yield echo
    await echo.close()


@pytest.fixture
def routes_file(tmp_path: Path, upstream: EchoUpstream) -> Path:
    path = tmp_path / "routes.yaml"
    path.write_text(
        "version: 1\n"
        f'upstreams: {{legacy: {{url: "{upstream.url}"}}}}\n'
        "default: legacy\n"
        'routes: [{id: orders, match: "GET /api/orders/{id}", to: legacy}]\n',
        encoding="utf-8",
    )
    return path


@pytest.fixture
async def proxy(routes_file: Path, aiohttp_client: AiohttpClient) -> TestClient[Any, Any]:
    return await aiohttp_client(create_app(routes_path=routes_file, reload_on_sighup=False))


def proxy_app(proxy: TestClient[Any, Any]) -> web.Application:
    app = proxy.app
    assert isinstance(app, web.Application)
    return app


@pytest.fixture
async def admin(proxy: TestClient[Any, Any], aiohttp_client: AiohttpClient) -> TestClient[Any, Any]:
    return await aiohttp_client(create_admin_app(proxy_app(proxy)))


async def test_health_and_ready(admin: TestClient[Any, Any], proxy: TestClient[Any, Any]) -> None:
    async with admin.get("/-/health") as response:
        assert response.status == 200
        assert await response.json() == {"status": "ok"}
    async with admin.get("/-/ready") as response:
        assert response.status == 200
        assert (await response.json())["ready"] is True
    # While draining (what SIGTERM does first) the proxy is not ready.
    proxy_app(proxy)[PROXY].ready = False
    async with admin.get("/-/ready") as response:
        assert response.status == 503


async def test_routes_shows_the_active_table_digest_and_last_reload(
    admin: TestClient[Any, Any], proxy: TestClient[Any, Any], routes_file: Path
) -> None:
    watcher = proxy_app(proxy)[PROXY].watcher
    async with admin.get("/-/routes") as response:
        body = await response.json()
    assert body["active"]["digest"] == watcher.table.digest
    assert [r["id"] for r in body["active"]["routes"]] == ["orders"]
    assert body["last_reload"]["ok"] is True
    assert body["last_reload"]["trigger"] == "initial"
    # A broken edit shows up as the last reload result; the table stays.
    routes_file.write_text("version: 1\nroutes: nope\n", encoding="utf-8")
    watcher.reload()
    async with admin.get("/-/routes") as response:
        body = await response.json()
    assert body["last_reload"]["ok"] is False
    assert "routes" in body["last_reload"]["error"]
    assert body["reloads"]["failure"] == 1
    assert body["active"]["digest"] == watcher.table.digest


async def test_metrics_are_prometheus_text_with_requests_and_reloads(
    admin: TestClient[Any, Any], proxy: TestClient[Any, Any]
) -> None:
    async with proxy.get("/api/orders/1") as response:
        assert response.status == 200
    async with admin.get("/-/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await response.text()
    assert (
        'club_proxy_requests_total{method="GET",route="orders",status="200",target="legacy"} 1.0'
        in text
    )
    assert 'club_proxy_route_reloads_total{result="success"} 0.0' in text
    assert "club_proxy_routes_info{" in text
    # Then the process-wide default registry (process_*, python_*, in-process apps'),
    # each family once.
    assert "python_info{" in text
    assert "process_cpu_seconds_total " in text
    types = [line for line in text.splitlines() if line.startswith("# TYPE ")]
    assert len(types) == len(set(types))


async def test_a_token_is_required_when_configured(
    proxy: TestClient[Any, Any], aiohttp_client: AiohttpClient
) -> None:
    admin = await aiohttp_client(create_admin_app(proxy_app(proxy), token=TOKEN))
    async with admin.get("/-/routes") as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    async with admin.get("/-/routes", headers={"Authorization": "Bearer wrong"}) as response:
        assert response.status == 401
    async with admin.get("/-/routes", headers={"Authorization": f"Bearer {TOKEN}"}) as response:
        assert response.status == 200


@pytest.mark.parametrize(
    ("host", "token", "allowed"),
    [
        ("127.0.0.1", None, True),  # loopback: no token needed
        ("::1", None, True),
        ("localhost", None, True),
        ("0.0.0.0", None, False),
        ("10.1.2.3", None, False),
        ("0.0.0.0", TOKEN, True),
    ],
)
def test_admin_off_loopback_needs_a_token(host: str, token: str | None, allowed: bool) -> None:
    if allowed:
        check_admin_binding(host, token)
    else:
        with pytest.raises(AdminBindError, match="--admin-token"):
            check_admin_binding(host, token)
    assert is_loopback(host) is (host in {"127.0.0.1", "::1", "localhost"})
