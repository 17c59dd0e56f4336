"""`make run` (examples/stack.py): the demo database, the club-api process, a clean stop."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid

import aiohttp
import pytest

from tests.conftest import ROOT, _drop_database

WAIT = 90.0


async def _announced(stdout: asyncio.StreamReader) -> dict[str, str]:
    """The `NAME URL` lines up to and including the proxy's admin API."""
    urls: dict[str, str] = {}
    while "admin" not in urls:
        line = (await stdout.readline()).decode()
        if not line:
            pytest.fail(f"the stack exited before announcing every service: {urls}")
        name, _, url = line.strip().partition(" ")
        urls[name] = url
    return urls


async def test_stack_serves_the_seeded_club_api_and_stops_cleanly(
    pg_server_dsn: str, redis_url: str, tmp_path, unused_tcp_port_factory
) -> None:
    database = f"club_stack_{uuid.uuid4().hex[:10]}"
    env = {
        **os.environ,
        "CLUB_PG_DSN": pg_server_dsn,
        "CLUB_REDIS_URL": redis_url,
        "CLUB_API_DATABASE": database,
        "CLUB_API_SEED_SCALE": "0.01",
        # Free ports, so a developer's own `make run` on the defaults does not collide.
        "CLUB_API_PORT": str(unused_tcp_port_factory()),
        "CLUB_PROXY_PORT": str(unused_tcp_port_factory()),
        "CLUB_PROXY_ADMIN_PORT": str(unused_tcp_port_factory()),
    }
    with (tmp_path / "stderr.txt").open("w") as stderr:
        stack = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "examples.stack"),
            cwd=ROOT,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
        )
    try:
        assert stack.stdout is not None
        urls = await asyncio.wait_for(_announced(stack.stdout), WAIT)
        assert urls["postgres"] == pg_server_dsn
        club = urls["club-api"]
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{club}/api/stats") as resp:
                stats = await resp.json()
            assert (stats["users"], stats["events"], stats["registrations"]) == (100, 10, 500)
            # The proxy fronts the same data, whichever side routes.yaml picks.
            async with session.get(f"{urls['proxy']}/api/stats") as resp:
                assert resp.status == 200
                assert await resp.json() == stats
            async with session.get(f"{urls['admin']}/-/routes") as resp:
                assert resp.status == 200

            stack.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(stack.wait(), WAIT) == 0
            # The club-api and proxy processes went with it.
            for url in (f"{club}/health", f"{urls['proxy']}/api/stats"):
                with pytest.raises(aiohttp.ClientConnectionError):
                    await session.get(url)
    finally:
        if stack.returncode is None:
            stack.kill()
            await stack.wait()
        await _drop_database(pg_server_dsn, database)
    assert "seeded" in (tmp_path / "stderr.txt").read_text()
