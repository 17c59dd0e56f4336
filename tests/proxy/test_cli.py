"""`club-proxy` as a real process: check, run with workers, SIGHUP, SIGTERM drain."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest

from proxy.__main__ import main
from tests.proxy.echo_upstream import EchoUpstream

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

STARTUP = 30.0


@pytest.fixture
async def upstream() -> AsyncIterator[EchoUpstream]:
    echo = await EchoUpstream().start()
    yield echo
    await echo.close()


def write_routes(tmp_path: Path, upstream_url: str) -> Path:
    path = tmp_path / "routes.yaml"
    path.write_text(
        "version: 1\n"
        f'upstreams: {{legacy: {{url: "{upstream_url}"}}}}\n'
        "default: legacy\n"
        'routes: [{id: orders, match: "GET /api/orders/{id}", to: legacy}]\n',
        encoding="utf-8",
    )
    return path


def test_check_valid_and_invalid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write_routes(tmp_path, "http://127.0.0.1:9")
    assert main(["check", str(good)]) == 0
    assert "ok" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nupstreams: {}\ndefault: nowhere\nroutes: []\n", encoding="utf-8")
    assert main(["check", str(bad)]) != 0
    assert "bad.yaml" in capsys.readouterr().err


def test_run_refuses_a_public_admin_api_without_token(
    tmp_path: Path, unused_tcp_port_factory: Any
) -> None:
    routes = write_routes(tmp_path, "http://127.0.0.1:9")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "proxy",
            "run",
            "--routes",
            str(routes),
            "--port",
            str(unused_tcp_port_factory()),
            "--admin-host",
            "0.0.0.0",
        ],
        capture_output=True,
        text=True,
        timeout=STARTUP,
        check=False,
    )
    assert result.returncode == 1
    assert "--admin-token" in result.stderr


async def _wait_ready(session: aiohttp.ClientSession, url: str) -> None:
    async def poll() -> None:
        while True:
            try:
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.1)

    await asyncio.wait_for(poll(), STARTUP)


async def test_workers_share_the_port_reload_on_sighup_and_drain_on_sigterm(
    tmp_path: Path, upstream: EchoUpstream, unused_tcp_port_factory: Any
) -> None:
    routes = write_routes(tmp_path, upstream.url)
    port = unused_tcp_port_factory()
    admin = unused_tcp_port_factory()
    # Worker i serves its admin API on admin + i (admin + 1 is almost surely free too).
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "proxy", "run", "--routes", str(routes)),
        *("--port", str(port), "--admin-port", str(admin), "--workers", "2"),
        *("--drain-timeout", "10", "--no-access-log"),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        # Every request bounded: a hang fails here, with the proxy's log, not at
        # pytest's global timeout.
        limit = aiohttp.ClientTimeout(total=STARTUP)
        async with aiohttp.ClientSession(timeout=limit) as session:
            for index in range(2):
                await _wait_ready(session, f"http://127.0.0.1:{admin + index}/-/ready")
            for _ in range(20):
                async with session.get(f"http://127.0.0.1:{port}/api/orders/1") as response:
                    assert response.status == 200
            os.kill(process.pid, signal.SIGHUP)
            for index in range(2):
                url = f"http://127.0.0.1:{admin + index}/-/routes"

                async def reloaded(url: str = url) -> None:
                    while True:
                        async with session.get(url) as response:
                            if (await response.json())["last_reload"]["trigger"] == "reload":
                                return
                        await asyncio.sleep(0.1)

                await asyncio.wait_for(reloaded(), STARTUP)
            # A request in flight when SIGTERM arrives still gets its answer.
            slow = asyncio.create_task(session.get(f"http://127.0.0.1:{port}/slow?delay=1.5"))
            await asyncio.wait_for(
                _until(lambda: any(r.target.startswith(b"/slow") for r in upstream.received)),
                STARTUP,
            )
            process.send_signal(signal.SIGTERM)
            response = await asyncio.wait_for(slow, STARTUP)
            assert response.status == 200
            response.release()
        assert await asyncio.wait_for(process.wait(), STARTUP) == 0
    except BaseException:
        if process.returncode is None:
            process.kill()
        assert process.stderr is not None
        log = (await process.stderr.read()).decode(errors="replace")
        print(f"club-proxy's stderr:\n{log}")  # noqa: T201 - shown by pytest on failure
        raise
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def _until(predicate: Any) -> None:
    while not predicate():
        await asyncio.sleep(0.02)
