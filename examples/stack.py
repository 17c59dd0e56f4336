"""`make run`: the whole demo stack on one machine.

Starts (or takes from `CLUB_PG_DSN` / `CLUB_REDIS_URL`) PostgreSQL and a
Redis-compatible server, creates the demo database (`CLUB_API_DATABASE`,
default `club_demo`), applies the reference schema and a seed
(`CLUB_API_SEED_SCALE` times the default size, default 0.1), starts the
reference club-api (`CLUB_API_PORT`, default a free port), prints one
`NAME URL` line per service so people and scripts can find them, and stops
everything it started on Ctrl-C or SIGTERM.
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

from examples.club_api import dbsetup, seed
from examples.club_api.app import CONFIG_DIR
from examples.devservices import ServiceStartError, start_services

if TYPE_CHECKING:
    from examples.devservices import DevServices

OUTBOX_SQL = Path(__file__).resolve().parent.parent / "legacy_compat" / "sql" / "outbox.sql"
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0


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
        # The durable PgQueue outbox, for the new services; harmless to the legacy app.
        await dbsetup.apply_sql(dsn, OUTBOX_SQL)
    size = seed.SeedSize.scaled(float(os.environ.get("CLUB_API_SEED_SCALE") or "0.1"))
    counts = await dbsetup.load_seed(dsn, size)
    await dbsetup.clear_event_cache(redis_url)
    note(f"seeded {counts}")
    return dsn


@dataclass(slots=True, kw_only=True)
class ClubApiProcess:
    """The reference club-api, run as `python -m examples.club_api` in its own session."""

    process: asyncio.subprocess.Process
    url: str

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within STOP_TIMEOUT."""
        if self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), STOP_TIMEOUT)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


async def _wait_ready(club: ClubApiProcess) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(int(READY_TIMEOUT / 0.2)):
            if club.process.returncode is not None:
                msg = f"club-api exited with status {club.process.returncode} during startup"
                raise ServiceStartError(msg)
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{club.url}/health") as resp:
                    if resp.status == 200:  # noqa: PLR2004
                        return
            await asyncio.sleep(0.2)
    msg = f"club-api did not answer {club.url}/health within {READY_TIMEOUT:.0f}s"
    raise ServiceStartError(msg)


async def start_club_api(pg_dsn: str, redis_url: str) -> ClubApiProcess:
    """Start the reference club-api on the given servers and wait for /health."""
    port = int(os.environ.get("CLUB_API_PORT") or _free_port())
    env = {**os.environ, "CLUB_PG__CLUB__DSN": pg_dsn, "CLUB_SETTINGS__REDIS_URL": redis_url}
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "examples.club_api", "--config-dir", str(CONFIG_DIR)),
        *("--host", "127.0.0.1", "--port", str(port)),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=sys.stderr.fileno(),  # its banner and logs are for people, not the NAME URL lines
        # Its own session: Ctrl-C reaches only us, and we stop it before the servers.
        start_new_session=True,
    )
    club = ClubApiProcess(process=process, url=f"http://127.0.0.1:{port}")
    try:
        await _wait_ready(club)
    except BaseException:
        await club.stop()
        raise
    return club


async def run_stack(services: DevServices) -> None:
    announce("postgres", services.pg_dsn)
    announce("redis", services.redis_url)
    demo_dsn = await prepare_database(services.pg_dsn, services.redis_url)
    club = await start_club_api(demo_dsn, services.redis_url)
    try:
        announce("club-api", club.url)
        await asyncio.Event().wait()  # until a signal cancels us
    finally:
        await club.stop()


async def serve() -> None:
    # A signal cancels the whole run at whatever step it is in; every step cleans up.
    main = asyncio.current_task()
    loop = asyncio.get_running_loop()
    if main is not None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, main.cancel)
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
