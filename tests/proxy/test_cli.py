"""`club-proxy` as a real process: check, run with workers, SIGHUP, SIGTERM drain."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest

from proxy.__main__ import main
from proxy.serving.server import ServeConfig
from tests.proxy.echo_upstream import EchoUpstream
from tests.proxy.forward_support import consecutive_free_ports

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


def _run_refused(routes: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`club-proxy run` that should refuse to start: its result, bounded in time."""
    return subprocess.run(
        [sys.executable, "-m", "proxy", "run", "--routes", str(routes), *args],
        capture_output=True,
        text=True,
        timeout=STARTUP,
        check=False,
    )


def test_run_help_shows_the_defaults(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLUB_PROXY_ADMIN_TOKEN", "s3cret-token")
    monkeypatch.setenv("CLUB_PROXY_SHADOW_DSN", "postgresql://u:s3cret-pw@db/x")
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--help"])
    assert exit_info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines anywhere
    for option, default in [
        ("--host", "127.0.0.1"),
        ("--port", "8000"),
        ("--admin-port", "9901"),
        ("--workers", "1"),
        ("--via-pseudonym", "club-proxy"),
        ("--drain-timeout", "30.0"),
        ("--log-level", "INFO"),
        ("--shadow-queue", "1024"),
        ("--shadow-workers", "16"),
        ("--shadow-rate", "200.0"),
    ]:
        help_text = out.split(f" {option} ", 1)[1].split(" --", 1)[0]
        assert f"(default: {default})" in help_text, option
    # Defaults taken from the environment are named, never shown: they are secrets.
    assert "$CLUB_PROXY_ADMIN_TOKEN" in out
    assert "$CLUB_PROXY_SHADOW_DSN" in out
    assert "s3cret" not in out


def test_run_refuses_a_public_admin_api_without_token(
    tmp_path: Path, unused_tcp_port_factory: Any
) -> None:
    routes = write_routes(tmp_path, "http://127.0.0.1:9")
    result = _run_refused(
        routes, "--port", str(unused_tcp_port_factory()), "--admin-host", "0.0.0.0"
    )
    assert result.returncode == 1
    assert "--admin-token" in result.stderr


def test_run_refuses_a_via_pseudonym_that_is_not_a_token(tmp_path: Path) -> None:
    routes = write_routes(tmp_path, "http://127.0.0.1:9")
    result = _run_refused(routes, "--admin-port", "0", "--via-pseudonym", "edge proxy")
    assert result.returncode == 1
    assert "Via pseudonym 'edge proxy'" in result.stderr


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"pseudonym": ""}, "Via pseudonym ''"),
        ({"pseudonym": "edge proxy"}, "Via pseudonym 'edge proxy'"),  # not one token
        ({"pseudonym": "edge,1"}, "Via pseudonym 'edge,1'"),  # would split the Via list
        ({"trusted_proxies": ("10.0.0.0/33",)}, "10.0.0.0/33"),
    ],
    ids=["empty", "space", "comma", "bad-cidr"],
)
def test_serve_config_rejects_a_bad_via_pseudonym_or_cidr_before_any_worker_starts(
    tmp_path: Path, options: dict[str, Any], message: str
) -> None:
    routes = write_routes(tmp_path, "http://127.0.0.1:9")
    assert ServeConfig(routes_path=routes, pseudonym="edge-1.eu_west").pseudonym == "edge-1.eu_west"
    with pytest.raises(ValueError, match=re.escape(message)):
        ServeConfig(routes_path=routes, **options)


async def test_run_keeps_and_extends_the_forwarding_headers_of_a_trusted_proxy(
    tmp_path: Path, upstream: EchoUpstream, unused_tcp_port_factory: Any
) -> None:
    # The test client (127.0.0.1) is the proxy in front.
    routes = write_routes(tmp_path, upstream.url)
    port = unused_tcp_port_factory()
    admin = unused_tcp_port_factory()
    args = ("--port", str(port), "--admin-port", str(admin), "--no-access-log")
    trust = ("--trusted-proxy", "192.0.2.0/24", "--trusted-proxy", "127.0.0.0/8")
    sent = {
        "X-Forwarded-For": "203.0.113.7, 198.51.100.9",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "club.example",
        "X-Real-IP": "203.0.113.7",
    }
    async with club_proxy(routes, *args, *trust, "--via-pseudonym", "edge-1") as process:
        limit = aiohttp.ClientTimeout(total=STARTUP)
        async with aiohttp.ClientSession(timeout=limit) as session:
            await _wait_ready(session, f"http://127.0.0.1:{admin}/-/ready")
            async with session.get(f"http://127.0.0.1:{port}/echo", headers=sent) as response:
                assert response.status == 200
        seen = upstream.received[-1]
        assert seen.all("X-Forwarded-For") == ["203.0.113.7, 198.51.100.9, 127.0.0.1"]
        for name in ("X-Forwarded-Proto", "X-Forwarded-Host", "X-Real-IP"):
            assert seen.all(name) == [sent[name]]
        assert seen.all("Via") == ["1.1 edge-1"]
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), STARTUP) == 0


@contextlib.asynccontextmanager
async def club_proxy(routes: Path, *args: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """`club-proxy run --routes routes *args`; its stderr is printed when the test fails."""
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "proxy", "run", "--routes", str(routes), *args),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield process
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
    # Worker i serves its admin API on admin + i: both must be free (CI once
    # found admin + 1 taken by another socket of the run).
    admin = consecutive_free_ports(2)
    args = ("--port", str(port), "--admin-port", str(admin), "--workers", "2")
    async with club_proxy(routes, *args, "--drain-timeout", "10", "--no-access-log") as process:
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


async def _until(predicate: Any) -> None:
    while not predicate():
        await asyncio.sleep(0.02)
