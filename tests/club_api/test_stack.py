"""`make run` (examples/stack.py): the demo database, the club-api process, a clean stop."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid

import aiohttp
import asyncpg
import pytest

from tests.conftest import ROOT

WAIT = 90.0


async def _announced(stdout: asyncio.StreamReader) -> dict[str, str]:
    """The `NAME URL` lines up to and including club-api's."""
    urls: dict[str, str] = {}
    while "club-api" not in urls:
        line = (await stdout.readline()).decode()
        if not line:
            pytest.fail(f"the stack exited before announcing club-api: {urls}")
        name, _, url = line.strip().partition(" ")
        urls[name] = url
    return urls


async def _drop(server_dsn: str, name: str) -> None:
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def test_stack_serves_the_seeded_club_api_and_stops_cleanly(
    pg_server_dsn: str, redis_url: str, tmp_path
) -> None:
    database = f"club_stack_{uuid.uuid4().hex[:10]}"
    env = {
        **os.environ,
        "CLUB_PG_DSN": pg_server_dsn,
        "CLUB_REDIS_URL": redis_url,
        "CLUB_API_DATABASE": database,
        "CLUB_API_SEED_SCALE": "0.01",
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

            stack.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(stack.wait(), WAIT) == 0
            # The club-api process went with it.
            with pytest.raises(aiohttp.ClientConnectionError):
                await session.get(f"{club}/health")
    finally:
        if stack.returncode is None:
            stack.kill()
            await stack.wait()
        await _drop(pg_server_dsn, database)
    assert "seeded" in (tmp_path / "stderr.txt").read_text()
