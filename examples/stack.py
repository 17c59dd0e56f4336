"""`make run`: the whole demo stack on one machine.

Starts (or takes from `CLUB_PG_DSN` / `CLUB_REDIS_URL`) PostgreSQL and a
Redis-compatible server, prints one `NAME URL` line per service so people and
scripts can find them, and stops everything it started on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys

from examples.devservices import ServiceStartError, start_services


def announce(name: str, url: str) -> None:
    """One line per service: the stable, scriptable contract of `make run`."""
    print(f"{name} {url}", flush=True)  # noqa: T201


async def wait_for_stop_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def serve() -> None:
    services = start_services(
        pg_dsn=os.environ.get("CLUB_PG_DSN") or None,
        redis_url=os.environ.get("CLUB_REDIS_URL") or None,
    )
    try:
        announce("postgres", services.pg_dsn)
        announce("redis", services.redis_url)
        await wait_for_stop_signal()
    finally:
        services.close()


def main() -> int:
    try:
        asyncio.run(serve())
    except ServiceStartError as exc:
        print(f"error: {exc}", file=sys.stderr)  # noqa: T201
        return 1
    with contextlib.suppress(BrokenPipeError):
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
