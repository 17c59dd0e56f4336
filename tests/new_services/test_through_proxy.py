"""A client walks the repository's routes.yaml through the proxy, both sides, unaware.

The proxy serves the real cutover map (legacy upstream pointed at a club-api
on a test port, `new` in-process with its own config dir); every answer the
client gets through it must equal what club-api alone answers, whichever side
served it, and the WebSocket (on new) must see writes made on legacy.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import pytest
import yaml
from aiohttp import WSMsgType

from examples.club_api.app import create_app as create_legacy_app
from legacy_compat import load_settings
from new_services.app import create_app as create_new_app
from proxy.routing.table import load_routes
from proxy.serving.app import create_app as create_proxy_app
from tests.club_api.conftest import club_settings

if TYPE_CHECKING:
    from aiohttp.test_utils import TestClient, TestServer

ROOT = Path(__file__).resolve().parents[2]
U1 = {"Authorization": "Bearer seed-token-1"}
U2 = {"Authorization": "Bearer seed-token-2"}

ROWS_SQL = """
INSERT INTO users (id, name, email, profile) VALUES
  (1, 'Анна', 'a@club.example', '{"city": "Riga"}'), (2, 'Boris', 'b@club.example', '{}');
INSERT INTO sessions (token, user_id) VALUES ('seed-token-1', 1), ('seed-token-2', 2);
INSERT INTO events (id, title, meta, starts_at, capacity, updated_at) VALUES
  (1, 'Padel', '{"level": "any"}', '2026-01-01 10:00', 5, '2025-01-01 00:00+00'),
  (2, 'Yoga', '{}', '2026-01-02 09:00', 5, '2025-01-01 00:00+00');
"""


def write_config(root: Path, pg_dsn: str, redis_url: str) -> Path:
    """A legacy config dir, like examples/club_api/app/config, on the test servers."""
    root.mkdir()
    (root / "settings.toml").write_text(
        f'MAX_TRANSACTION_TIME = 5.0\nREDIS_URL = "{redis_url}"\nEVENT_CACHE_TTL = 60.0\n'
        "PGQUEUE_DEBOUNCE = 0.05\nWS_HEARTBEAT = 30.0\n",
        encoding="utf-8",
    )
    (root / "pg.toml").write_text(f'[club]\ndsn = "{pg_dsn}"\n', encoding="utf-8")
    (root / "info.toml").write_text('name = "club-api"\nversion = "1.0.0"\n', encoding="utf-8")
    return root


async def start_walk(
    tmp_path: Path,
    pg_dsn: str,
    redis_url: str,
    aiohttp_server: Any,
    aiohttp_client: Any,
    *,
    move: dict[str, str],
    new_url: bool,
) -> tuple[TestClient[Any, Any], TestClient[Any, Any]]:
    """(client of the proxy, client of club-api alone), both on one database.

    The proxy serves the repository's routes.yaml with the route ids in
    `move` sent elsewhere, and `new` in-process or (new_url) as an upstream.
    """
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute(ROWS_SQL)
    finally:
        await conn.close()
    legacy_server: TestServer = await aiohttp_server(
        create_legacy_app(club_settings(pg_dsn, redis_url))
    )
    routes = yaml.safe_load((ROOT / "routes.yaml").read_text(encoding="utf-8"))
    routes["upstreams"]["legacy"]["url"] = str(legacy_server.make_url("/")).rstrip("/")
    config_dir = write_config(tmp_path / "config", pg_dsn, redis_url)
    routes["new"]["config_dir"] = str(config_dir)
    if new_url:
        new_server = await aiohttp_server(create_new_app(load_settings(config_dir, environ={})))
        routes["new"] = {"url": str(new_server.make_url("/")).rstrip("/")}
    for route in routes["routes"]:
        route["to"] = move.get(route["id"], route["to"])
    path = tmp_path / "routes.yaml"
    path.write_text(yaml.safe_dump(routes), encoding="utf-8")
    proxy = await aiohttp_client(create_proxy_app(routes_path=path, reload_on_sighup=False))
    direct = await aiohttp_client(legacy_server)
    return proxy, direct


async def _same(proxy: Any, direct: Any, method: str, path: str, **kw: Any) -> None:
    # The events list carries its answer time (`generated_at`, whole seconds):
    # two answers that straddle a second are asked again, never compared loosely.
    for _ in range(3):
        async with (
            proxy.request(method, path, **kw) as via,
            direct.request(method, path, **kw) as alone,
        ):
            answers = (via.status, await via.read()), (alone.status, await alone.read())
            if answers[0] != answers[1] and b'"generated_at"' in answers[1][1]:
                continue
            assert answers[0] == answers[1], path
            assert via.headers.get("Content-Type") == alone.headers.get("Content-Type")
            assert via.headers.get("WWW-Authenticate") == alone.headers.get("WWW-Authenticate")
            return
    pytest.fail(f"{path}: the answers differ beyond generated_at in three tries")


async def _text(ws: Any) -> str:
    msg = await asyncio.wait_for(ws.receive(), 20)
    assert msg.type is WSMsgType.TEXT, msg
    return str(msg.data)


@pytest.fixture
async def walk_args(  # noqa: PLR0917  (pytest passes fixtures positionally)
    tmp_path, pg_dsn, redis_url, redis_client, aiohttp_server, aiohttp_client
):
    return (tmp_path, pg_dsn, redis_url, aiohttp_server, aiohttp_client)


async def _walk_http(proxy: Any, direct: Any) -> None:
    for path in (
        "/api/users/1",
        "/api/users?limit=1",
        "/api/users/x",
        "/api/events/1",
        "/api/events/99",
        "/api/events",
        "/health",
    ):
        await _same(proxy, direct, "GET", path)
    await _same(proxy, direct, "POST", "/api/events/1/registrations")  # 401 on either side


async def _walk_socket(proxy: Any) -> None:
    async with proxy.ws_connect("/ws?token=seed-token-2") as ws:
        assert await _text(ws) == '{"type": "hello", "user_id": 2}'
        # A registration (legacy, or new on its canary) reaches the socket.
        assert (await proxy.post("/api/events/2/registrations", headers=U2)).status == 201
        assert await _text(ws) == '{"type": "new_registration", "user_id": 2, "event_id": 2}'
        sent = await proxy.post("/api/users/2/messages", json={"text": "hi"}, headers=U1)
        assert await sent.read() == b'{"delivered":1}'
        assert '"type": "direct_message", "from_user_id": 1' in await _text(ws)
        await ws.send_str("ping")
        assert await _text(ws) == "pong"
    # The event detail (new) and the list (legacy) agree after the write.
    detail = await (await proxy.get("/api/events/2")).json()
    listed = await (await proxy.get("/api/events")).json()
    assert detail["registered"] == 1
    assert {k: v for k, v in detail.items() if k not in {"registered", "spots_left"}} == (
        listed["items"][1]
    )


async def test_repo_routes_in_process(walk_args) -> None:
    proxy, direct = await start_walk(*walk_args, move={}, new_url=False)
    table = load_routes(ROOT / "routes.yaml")
    # The walk must really cross sides: the map sends some of these to each.
    targets = {table.match("GET", p).target for p in ("/api/users/1", "/api/events")}
    assert targets == {"new", "legacy"}
    await _walk_http(proxy, direct)
    await _walk_socket(proxy)
    await _same(proxy, direct, "GET", "/api/stats")


async def test_socket_and_messages_on_new_out_of_process(walk_args) -> None:
    # The next cutover step: /ws and messages on new (as an upstream: see below).
    move = {"ws": "new", "user-message": "new", "registration-delete": "new"}
    proxy, direct = await start_walk(*walk_args, move=move, new_url=True)
    await _walk_http(proxy, direct)
    await _walk_socket(proxy)
    await _same(proxy, direct, "DELETE", "/api/events/2/registrations/me", headers=U1)


async def test_socket_on_new_in_process(walk_args) -> None:
    proxy, _direct = await start_walk(*walk_args, move={"ws": "new"}, new_url=False)
    async with proxy.ws_connect("/ws?token=seed-token-2") as ws:
        assert await _text(ws) == '{"type": "hello", "user_id": 2}'
