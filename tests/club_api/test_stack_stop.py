"""`make run` (examples/stack.py): a second stop signal never cuts the first stop short.

make passes SIGINT/SIGTERM on to the stack after the whole process group
already had it, so the stack gets the signal twice. The second one arrives
here while the stack is stopping its children (once the proxy has started
draining); every child must still be stopped, and the stack exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import uuid
from pathlib import Path

import aiohttp
import pytest

from tests.club_api.test_stack import WAIT, _announced
from tests.conftest import ROOT, _drop_database


def _children(pid: int) -> list[int]:
    """The pids whose parent is `pid` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            # pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        stat = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def _until_not_ready(session: aiohttp.ClientSession, url: str) -> None:
    while True:
        try:
            async with session.get(url) as resp:
                if resp.status != 200:
                    return
        except aiohttp.ClientConnectionError:
            return
        await asyncio.sleep(0.01)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_second_stop_signal_does_not_cut_the_ordered_stop_short(
    pg_server_dsn: str,
    redis_url: str,
    tmp_path: Path,
    unused_tcp_port_factory: object,
    sig: signal.Signals,
) -> None:
    database = f"club_stack_{uuid.uuid4().hex[:10]}"
    free_port = unused_tcp_port_factory
    assert callable(free_port)
    env = {
        **os.environ,
        "CLUB_PG_DSN": pg_server_dsn,
        "CLUB_REDIS_URL": redis_url,
        "CLUB_API_DATABASE": database,
        "CLUB_API_SEED_SCALE": "0.01",
        "CLUB_API_PORT": str(free_port()),
        "CLUB_PROXY_PORT": str(free_port()),
        "CLUB_PROXY_ADMIN_PORT": str(free_port()),
    }
    with (tmp_path / "stderr.txt").open("w") as stderr:
        stack = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "examples.stack"),
            cwd=ROOT,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
        )
    children: list[int] = []
    try:
        assert stack.stdout is not None
        urls = await asyncio.wait_for(_announced(stack.stdout), WAIT)
        children = _children(stack.pid)
        assert len(children) == 2  # club-api and the proxy
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT)) as session:
            stack.send_signal(sig)
            # The stack is stopping its children in order (the proxy drains first).
            await asyncio.wait_for(_until_not_ready(session, f"{urls['admin']}/-/ready"), WAIT)
            stack.send_signal(sig)
            assert await asyncio.wait_for(stack.wait(), WAIT) == 0
            # Every child went with it: nothing answers, no process is left.
            for url in (f"{urls['club-api']}/health", f"{urls['proxy']}/api/stats"):
                with pytest.raises(aiohttp.ClientConnectionError):
                    await session.get(url)
        for _ in range(100):
            if not any(_alive(pid) for pid in children):
                break
            await asyncio.sleep(0.05)
        assert [pid for pid in children if _alive(pid)] == []
    finally:
        if stack.returncode is None:
            stack.kill()
            await stack.wait()
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        await _drop_database(pg_server_dsn, database)
