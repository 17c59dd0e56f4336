"""`make run` on any port serves the routes file itself, so a live edit of it applies."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from typing import TYPE_CHECKING, Any

import aiohttp
from yarl import URL

from examples import stack
from proxy.routing.table import load_routes
from tests.club_api.test_stack import WAIT, _announced
from tests.conftest import ROOT, _drop_database

if TYPE_CHECKING:
    from pathlib import Path

    import pytest


def test_routes_for_is_the_repository_file_on_any_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLUB_ROUTES", raising=False)
    monkeypatch.delenv("CLUB_API_URL", raising=False)
    club = "http://127.0.0.1:18765"
    served = stack.routes_for(club)
    assert served == (ROOT / "routes.yaml").resolve()
    # The proxy's environment points the file's legacy upstream at that club-api.
    env = stack.proxy_env({"PATH": "/bin"}, club)
    assert env == {"PATH": "/bin", "CLUB_API_URL": club}
    monkeypatch.setenv("CLUB_API_URL", env["CLUB_API_URL"])
    assert load_routes(served).upstreams["legacy"].url == URL(club)


def test_routes_for_keeps_club_routes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mine = tmp_path / "mine.yaml"
    mine.write_text('version: 1\nupstreams: {legacy: {url: "http://10.0.0.1:80"}}\n')
    monkeypatch.setenv("CLUB_ROUTES", str(mine))
    assert stack.routes_for("http://127.0.0.1:18765") == mine.resolve()
    assert list(tmp_path.iterdir()) == [mine]  # no copy written anywhere


async def _routes(session: aiohttp.ClientSession, admin: str) -> dict[str, Any]:
    async with session.get(f"{admin}/-/routes") as resp:
        assert resp.status == 200
        body: dict[str, Any] = await resp.json()
        return body


async def test_stack_on_other_ports_applies_live_edits_of_the_file(
    pg_server_dsn: str, redis_url: str, tmp_path: Path, unused_tcp_port_factory: Any
) -> None:
    # CLUB_ROUTES: a file this test may edit, the repository's routes.yaml otherwise unchanged
    # (config_dir made absolute, as it lives elsewhere).
    routes = tmp_path / "routes.yaml"
    config_dir = ROOT / "examples" / "club_api" / "app" / "config"
    text = (ROOT / "routes.yaml").read_text(encoding="utf-8")
    text = text.replace('config_dir: "examples/club_api/app/config"', f'config_dir: "{config_dir}"')
    routes.write_text(text, encoding="utf-8")
    database = f"club_stack_{uuid.uuid4().hex[:10]}"
    env = {
        **os.environ,
        "CLUB_PG_DSN": pg_server_dsn,
        "CLUB_REDIS_URL": redis_url,
        "CLUB_API_DATABASE": database,
        "CLUB_API_SEED_SCALE": "0.01",
        "CLUB_ROUTES": str(routes),
        # Not the file's default (8080): the case that used to serve a copy.
        "CLUB_API_PORT": str(unused_tcp_port_factory()),
        "CLUB_PROXY_PORT": str(unused_tcp_port_factory()),
        "CLUB_PROXY_ADMIN_PORT": str(unused_tcp_port_factory()),
    }
    env.pop("CLUB_API_URL", None)
    with (tmp_path / "stderr.txt").open("w") as stderr:
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "examples.stack"),
            cwd=ROOT,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
        )
    try:
        assert proc.stdout is not None
        urls = await asyncio.wait_for(_announced(proc.stdout), WAIT)
        async with aiohttp.ClientSession() as session:
            active = (await _routes(session, urls["admin"]))["active"]
            assert active["source"] == str(routes.resolve())
            assert active["upstreams"]["legacy"] == urls["club-api"]
            async with session.get(f"{urls['proxy']}/api/stats") as resp:
                assert resp.status == 200

            # A live edit of that file, as the README says: stats moves to new.
            old = '{id: stats, match: "GET /api/stats", to: legacy}'
            assert old in text
            edited = tmp_path / "routes.yaml.tmp"
            edited.write_text(text.replace(old, old.replace("legacy", "new")), encoding="utf-8")
            edited.replace(routes)
            stats: dict[str, Any] = {}
            for _ in range(100):
                active = (await _routes(session, urls["admin"]))["active"]
                stats = next(route for route in active["routes"] if route["id"] == "stats")
                if stats["to"] == "new":
                    break
                await asyncio.sleep(0.1)
            assert stats["to"] == "new", "the edit of the served file was not applied"
            assert active["upstreams"]["legacy"] == urls["club-api"]
            async with session.get(f"{urls['proxy']}/api/stats") as resp:
                assert resp.status == 200
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), WAIT) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await _drop_database(pg_server_dsn, database)
    assert "serving the copy" not in (tmp_path / "stderr.txt").read_text()
