"""`python -m deploy.init_db`: the one-shot setup of the demo database (docker-compose.yml).

Creates the database named by `CLUB_PG__CLUB__DSN` if needed, applies the
reference schema (idempotent) and the PgQueue outbox table, and loads the demo
seed (`CLUB_API_SEED_SCALE` times the default size, default 0.1) only when the
`users` table is empty, so a second `docker-compose up` keeps the data people
wrote (`CLUB_RESEED=1` reseeds anyway). Exit 0 when the database is ready.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import asyncpg

from examples.club_api import dbsetup, seed
from examples.club_api.app import CONFIG_DIR
from legacy_compat import load_settings

OUTBOX_SQL = Path(__file__).resolve().parent.parent / "legacy_compat" / "sql" / "outbox.sql"
ATTEMPTS = 30  # one a second: the server may still be starting


def say(text: str) -> None:
    sys.stdout.write(f"init-db: {text}\n")
    sys.stdout.flush()


async def wait_for_server(dsn: str) -> None:
    maintenance = dbsetup.with_database(dsn, "postgres")
    for attempt in range(ATTEMPTS):
        try:
            conn = await asyncpg.connect(maintenance, timeout=5)
        except (OSError, asyncpg.PostgresError) as exc:
            if attempt == ATTEMPTS - 1:
                raise
            say(f"waiting for PostgreSQL ({exc.__class__.__name__})")
            await asyncio.sleep(1)
        else:
            await conn.close()
            return


async def seeded(dsn: str) -> bool:
    conn = await asyncpg.connect(dsn)
    try:
        return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM users)"))
    finally:
        await conn.close()


async def run() -> None:
    settings = load_settings(CONFIG_DIR)
    dsn = settings.databases["club"].dsn
    await wait_for_server(dsn)
    created = await dbsetup.ensure_database(dsn)
    await dbsetup.apply_schema(dsn)
    if OUTBOX_SQL.exists():
        await dbsetup.apply_sql(dsn, OUTBOX_SQL)
    say(f"schema applied ({'database created' if created else 'database existed'})")
    if await seeded(dsn) and os.environ.get("CLUB_RESEED") != "1":
        say("seed skipped: the users table has rows (CLUB_RESEED=1 reseeds)")
        return
    size = seed.SeedSize.scaled(float(os.environ.get("CLUB_API_SEED_SCALE") or "0.1"))
    counts = await dbsetup.load_seed(dsn, size)
    cleared = await dbsetup.clear_event_cache(settings.redis_url)
    say(f"seeded {counts}; dropped {cleared} cached events")


def main() -> int:
    asyncio.run(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
