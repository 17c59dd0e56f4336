"""`python -m examples.club_api`: serve the reference club-api, or set up its database.

    python -m examples.club_api [--config-dir DIR] [--host H] [--port N]   serve (default)
    python -m examples.club_api [--config-dir DIR] init-db                 create the database, apply schema.sql
    python -m examples.club_api [--config-dir DIR] seed [--scale F] [--users N] [--events N]
                                [--registrations N] [--seed S] [--init-db] load deterministic seed data

The database is `pg.toml [club]` (or CLUB_PG__CLUB__DSN), Redis is
settings.toml REDIS_URL (or CLUB_SETTINGS__REDIS_URL).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from pathlib import Path

from aiohttp import web

from examples.club_api import dbsetup, seed
from examples.club_api.app import CONFIG_DIR, create_app
from legacy_compat import ConfigError, Settings, load_settings

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m examples.club_api", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--config-dir", type=Path, default=CONFIG_DIR, help="legacy config dir")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="serve the API (the default)")
    commands.add_parser("init-db", help="create the database if needed and apply schema.sql")
    seeder = commands.add_parser("seed", help="replace all rows with deterministic seed data")
    seeder.add_argument("--scale", type=float, default=1.0, help="times the default size")
    seeder.add_argument("--users", type=int)
    seeder.add_argument("--events", type=int)
    seeder.add_argument("--registrations", type=int)
    seeder.add_argument("--seed", type=int, default=42, help="random seed")
    seeder.add_argument("--init-db", action="store_true", help="run init-db first")
    return parser


def _size(args: argparse.Namespace) -> seed.SeedSize:
    base = seed.SeedSize.scaled(args.scale)
    return seed.SeedSize(
        users=args.users if args.users is not None else base.users,
        events=args.events if args.events is not None else base.events,
        registrations=args.registrations if args.registrations is not None else base.registrations,
    )


async def _init_db(dsn: str) -> None:
    created = await dbsetup.ensure_database(dsn)
    await dbsetup.apply_schema(dsn)
    print(f"schema applied ({'database created' if created else 'database existed'})")  # noqa: T201


async def _seed(args: argparse.Namespace, settings: Settings) -> None:
    dsn = settings.databases["club"].dsn
    if args.init_db:
        await _init_db(dsn)
    started = time.perf_counter()
    counts = await dbsetup.load_seed(dsn, _size(args), seed_value=args.seed)
    took = time.perf_counter() - started
    cleared = await dbsetup.clear_event_cache(settings.redis_url)
    print(f"seeded {counts} in {took:.1f}s; dropped {cleared} cached events")  # noqa: T201


def _run(args: argparse.Namespace, settings: Settings) -> None:
    if "club" not in settings.databases:
        msg = f"{args.config_dir}/pg.toml: no [club] database"
        raise ConfigError(msg)
    dsn = settings.databases["club"].dsn
    if args.command == "init-db":
        asyncio.run(_init_db(dsn))
    elif args.command == "seed":
        asyncio.run(_seed(args, settings))
    else:
        web.run_app(create_app(settings), host=args.host, port=args.port)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        _run(args, load_settings(args.config_dir))
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)  # noqa: T201
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
