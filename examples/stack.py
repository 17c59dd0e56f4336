"""`make run`: the whole demo stack on one machine.

Starts (or takes from `CLUB_PG_DSN` / `CLUB_REDIS_URL`) PostgreSQL and a
Redis-compatible server, creates the demo database (`CLUB_API_DATABASE`,
default `club_demo`), applies the reference schema and a seed
(`CLUB_API_SEED_SCALE` times the default size, default 0.1), starts the
reference club-api (`CLUB_API_PORT`, default 8080 when free) and club-proxy
in front of it (`CLUB_PROXY_PORT`, default 8000, admin API on
`CLUB_PROXY_ADMIN_PORT`, default 9000) serving `CLUB_ROUTES` (default the
repository's routes.yaml, edited live; its legacy URL is `CLUB_API_URL`,
which the proxy gets set to club-api's), prints one `NAME URL` line per service
so people and scripts can find them, and stops everything it started on Ctrl-C
or SIGTERM: the proxy first, then club-api, then Redis and PostgreSQL. The
first signal starts that stop and any later one is ignored (make passes the
signal on after the whole process group already had it), so a stop always
runs to its end.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import yaml

from examples.club_api import dbsetup, seed
from examples.club_api.app import CONFIG_DIR
from examples.devservices import ServiceStartError, start_services

if TYPE_CHECKING:
    from examples.devservices import DevServices

ROOT = Path(__file__).resolve().parent.parent
OUTBOX_SQL = ROOT / "legacy_compat" / "sql" / "outbox.sql"
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
# The proxy's --drain-timeout: WebSockets close at once (1001), plain requests get
# this long; the stack waits the proxy's own kill margin longer before a SIGKILL.
PROXY_DRAIN_TIMEOUT = 10.0
PROXY_STOP_TIMEOUT = PROXY_DRAIN_TIMEOUT + 10.0


def announce(name: str, url: str) -> None:
    """One line per service: the stable, scriptable contract of `make run`."""
    print(f"{name} {url}", flush=True)  # noqa: T201


def note(text: str) -> None:
    """Progress for people, on stderr so stdout stays `NAME URL` lines."""
    print(text, file=sys.stderr, flush=True)  # noqa: T201


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def prepare_database(server_dsn: str, redis_url: str) -> str:
    """Create the demo database if needed, apply the schemas, load the seed; its DSN."""
    dsn = dbsetup.with_database(server_dsn, os.environ.get("CLUB_API_DATABASE") or "club_demo")
    await dbsetup.ensure_database(dsn)
    await dbsetup.apply_schema(dsn)
    if OUTBOX_SQL.exists():
        # The durable PgQueue outbox (legacy_compat/sql/outbox.sql), so `durable=` mode can be
        # tried against the demo database (docs/events.md); neither app uses it, both ignore it.
        await dbsetup.apply_sql(dsn, OUTBOX_SQL)
    size = seed.SeedSize.scaled(float(os.environ.get("CLUB_API_SEED_SCALE") or "0.1"))
    counts = await dbsetup.load_seed(dsn, size)
    await dbsetup.clear_event_cache(redis_url)
    note(f"seeded {counts}")
    return dsn


@dataclass(slots=True, kw_only=True)
class ChildProcess:
    """A service run as a child process in its own session (Ctrl-C reaches only us)."""

    name: str
    process: asyncio.subprocess.Process
    url: str
    ready_url: str
    stop_timeout: float = STOP_TIMEOUT

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within `stop_timeout`."""
        if self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), self.stop_timeout)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


async def _wait_ready(child: ChildProcess) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(int(READY_TIMEOUT / 0.2)):
            if child.process.returncode is not None:
                msg = f"{child.name} exited with status {child.process.returncode} during startup"
                raise ServiceStartError(msg)
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(child.ready_url) as resp:
                    if resp.status == 200:  # noqa: PLR2004
                        return
            await asyncio.sleep(0.2)
    msg = f"{child.name} did not answer {child.ready_url} within {READY_TIMEOUT:.0f}s"
    raise ServiceStartError(msg)


async def start_child(
    name: str,
    args: list[str],
    *,
    env: dict[str, str],
    url: str,
    ready_url: str,
    stop_timeout: float = STOP_TIMEOUT,
) -> ChildProcess:
    """Start `python args...` and wait until `ready_url` answers 200."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        env=env,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=sys.stderr.fileno(),  # banners and logs are for people, not the NAME URL lines
        # Its own session: Ctrl-C reaches only us, and we stop it in order.
        start_new_session=True,
    )
    child = ChildProcess(
        name=name, process=process, url=url, ready_url=ready_url, stop_timeout=stop_timeout
    )
    try:
        await _wait_ready(child)
    except BaseException:
        await child.stop()
        raise
    return child


def _port(variable: str, preferred: int) -> int:
    """The port from `variable`, else `preferred` when it is free, else any free port."""
    if os.environ.get(variable):
        return int(os.environ[variable])
    with socket.socket() as sock, contextlib.suppress(OSError):
        sock.bind(("127.0.0.1", preferred))
        return preferred
    return _free_port()


def routes_for(club_url: str) -> Path:
    """The routes file the proxy serves: `CLUB_ROUTES` (default: the repository's routes.yaml).

    Always the file itself, so an edit of it is applied live on any port: the
    proxy gets `CLUB_API_URL=club_url` (`proxy_env`), which the repository's
    file takes as its legacy upstream (`url: "${CLUB_API_URL:-...}"`,
    docs/routes.md). A file whose legacy URL is a fixed other address is
    served as it is, with a warning.
    """
    routes = Path(os.environ.get("CLUB_ROUTES") or ROOT / "routes.yaml").resolve()
    with contextlib.suppress(OSError, yaml.YAMLError, KeyError, TypeError, AttributeError):
        data = yaml.safe_load(routes.read_text(encoding="utf-8"))
        url = str(data["upstreams"]["legacy"]["url"])
        if "${CLUB_API_URL" not in url and url.rstrip("/") != club_url:
            note(
                f"routes: {routes} sends legacy to {url}, not to club-api at {club_url}; "
                'write url: "${CLUB_API_URL:-...}" there to follow it (docs/routes.md)'
            )
    return routes


def proxy_env(env: dict[str, str], club_url: str) -> dict[str, str]:
    """The proxy's environment: `env` with `CLUB_API_URL`, where club-api listens."""
    return {**env, "CLUB_API_URL": club_url}


async def start_club_api(env: dict[str, str]) -> ChildProcess:
    """Start the reference club-api (legacy side) and wait for /health."""
    port = _port("CLUB_API_PORT", 8080)
    url = f"http://127.0.0.1:{port}"
    args = ["-m", "examples.club_api", "--config-dir", str(CONFIG_DIR)]
    args += ["--host", "127.0.0.1", "--port", str(port)]
    return await start_child("club-api", args, env=env, url=url, ready_url=f"{url}/health")


async def start_proxy(env: dict[str, str], routes: Path) -> tuple[ChildProcess, str]:
    """Start club-proxy in front of club-api; the child and its admin URL."""
    port = _port("CLUB_PROXY_PORT", 8000)
    admin_port = _port("CLUB_PROXY_ADMIN_PORT", 9000)
    url, admin = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}"
    args = ["-m", "proxy", "run", "--routes", str(routes), "--host", "127.0.0.1"]
    args += ["--port", str(port), "--admin-port", str(admin_port)]
    args += ["--drain-timeout", str(PROXY_DRAIN_TIMEOUT)]
    child = await start_child(
        "proxy",
        args,
        env=env,
        url=url,
        ready_url=f"{admin}/-/ready",
        stop_timeout=PROXY_STOP_TIMEOUT,
    )
    return child, admin


async def run_stack(services: DevServices) -> None:
    announce("postgres", services.pg_dsn)
    announce("redis", services.redis_url)
    demo_dsn = await prepare_database(services.pg_dsn, services.redis_url)
    # Both sides read the legacy config; these explicit overrides point it at the demo servers.
    env = {
        **os.environ,
        "CLUB_PG__CLUB__DSN": demo_dsn,
        "CLUB_SETTINGS__REDIS_URL": services.redis_url,
    }
    children: list[ChildProcess] = []
    try:
        club = await start_club_api(env)
        children.append(club)
        announce("club-api", club.url)
        proxy, admin = await start_proxy(proxy_env(env, club.url), routes_for(club.url))
        children.append(proxy)
        announce("proxy", proxy.url)
        announce("admin", admin)
        announce("shadow", f"{admin}/-/shadow")
        await asyncio.Event().wait()  # until a signal cancels us
    finally:
        # The proxy first, so it never answers 502 for a club-api we stopped.
        for child in reversed(children):
            await child.stop()


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _stop_once(main: asyncio.Task[None]) -> None:
    """The first stop signal cancels `main`; later ones are ignored.

    A second cancel would land in the middle of the ordered stop (`run_stack`'s
    finally) and leave the children not yet stopped running.
    """
    loop = asyncio.get_running_loop()
    for sig in _STOP_SIGNALS:
        loop.add_signal_handler(sig, note, "already stopping")
    main.cancel()


async def serve() -> None:
    # A signal cancels the whole run at whatever step it is in; every step cleans up.
    main = asyncio.current_task()
    loop = asyncio.get_running_loop()
    if main is not None:
        for sig in _STOP_SIGNALS:
            loop.add_signal_handler(sig, _stop_once, main)
    services = start_services(
        pg_dsn=os.environ.get("CLUB_PG_DSN") or None,
        redis_url=os.environ.get("CLUB_REDIS_URL") or None,
    )
    try:
        await run_stack(services)
    finally:
        services.close()


def main() -> int:
    try:
        asyncio.run(serve())
    except asyncio.CancelledError:
        pass  # stopped by Ctrl-C or SIGTERM: the normal way out
    except ServiceStartError as exc:
        print(f"error: {exc}", file=sys.stderr)  # noqa: T201
        return 1
    with contextlib.suppress(BrokenPipeError):
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
