"""The deterministic seed generator, its COPY load, and the setup CLI."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import TYPE_CHECKING

import asyncpg
import pytest

from examples.club_api import dbsetup, seed
from tests.conftest import ROOT

if TYPE_CHECKING:
    from collections.abc import Callable

SMALL = seed.SeedSize(users=40, events=6, registrations=120)


def test_same_arguments_give_the_same_rows() -> None:
    assert seed.generate(SMALL, seed=7) == seed.generate(SMALL, seed=7)
    assert seed.generate(SMALL, seed=7) != seed.generate(SMALL, seed=8)


def test_scaled_size() -> None:
    assert seed.SeedSize.scaled(0.1) == seed.SeedSize(users=1000, events=100, registrations=5000)
    with pytest.raises(ValueError, match="seed size"):
        seed.SeedSize(users=0)


def test_first_users_and_events_are_active() -> None:
    # The README's curl examples rely on it.
    data = seed.generate(seed.SeedSize())
    assert all(u.active for u in data.users[: seed.ALWAYS_ACTIVE])
    assert all(e.active for e in data.events[: seed.ALWAYS_ACTIVE])
    assert not all(u.active for u in data.users)
    for event in data.events[: seed.ALWAYS_ACTIVE]:
        taken = sum(r.event_id == event.id for r in data.registrations)
        assert taken <= event.capacity - seed.FREE_PLACES


def test_registrations_respect_capacity_and_uniqueness() -> None:
    data = seed.generate(seed.SeedSize(users=5, events=3, registrations=1000))
    pairs = [(r.user_id, r.event_id) for r in data.registrations]
    assert len(pairs) == len(set(pairs))
    # All three are among the first ten events, which keep FREE_PLACES free.
    capacity = {e.id: min(e.capacity - seed.FREE_PLACES, 5) for e in data.events}
    # Asked for more than fits: every event ends up exactly full, never over.
    assert len(pairs) == sum(capacity.values())


async def test_default_size_loads_and_leaves_the_database_consistent(pg_dsn: str) -> None:
    conn = await asyncpg.connect(pg_dsn)
    notified: list[str] = []
    await conn.add_listener("events", lambda *args: notified.append(args[3]))
    try:
        counts = await dbsetup.load_seed(pg_dsn, seed.SeedSize())
        assert counts == {
            "users": 10_000,
            "sessions": 10_000,
            "events": 1_000,
            "registrations": 50_000,
        }
        over = await conn.fetchval(
            "SELECT count(*) FROM events e"
            " WHERE (SELECT count(*) FROM registrations r WHERE r.event_id = e.id) > e.capacity"
        )
        assert over == 0
        token_user = await conn.fetchval(
            "SELECT user_id FROM sessions WHERE token = $1", seed.seed_token(42)
        )
        assert token_user == 42
        # Sequences were moved past the COPYed ids, and the trigger is back on.
        new_id = await conn.fetchval(
            "INSERT INTO registrations (user_id, event_id)"
            " SELECT 1, id FROM events WHERE id NOT IN"
            " (SELECT event_id FROM registrations WHERE user_id = 1) LIMIT 1 RETURNING id"
        )
        assert new_id == 50_001
        await asyncio.wait_for(_until(lambda: notified), 15)
        # The bulk load itself sent nothing: the only notification is the insert above.
        assert len(notified) == 1
        assert '"new_registration"' in notified[0]
    finally:
        await conn.close()


async def _until(condition: Callable[[], object]) -> None:
    while not condition():
        await asyncio.sleep(0.02)


async def test_reseeding_replaces_the_rows(pg_dsn: str) -> None:
    await dbsetup.load_seed(pg_dsn, SMALL)
    await dbsetup.load_seed(pg_dsn, seed.SeedSize(users=3, events=1, registrations=2))
    conn = await asyncpg.connect(pg_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM users") == 3
        assert await conn.fetchval("SELECT max(id) FROM users") == 3
    finally:
        await conn.close()


async def run_cli(*args: str, env: dict[str, str]) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "examples.club_api",
        *args,
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 90)
    return process.returncode or 0, out.decode()


async def test_cli_init_db_and_seed_create_a_new_database(
    pg_server_dsn: str, redis_url: str, redis_client
) -> None:
    name = f"club_cli_{os.getpid()}"
    dsn = dbsetup.with_database(pg_server_dsn, name)
    env = {"CLUB_PG__CLUB__DSN": dsn, "CLUB_SETTINGS__REDIS_URL": redis_url}
    await redis_client.set("club:event:1", "json:plain:{}")
    await redis_client.set("unrelated", "kept")
    try:
        code, out = await run_cli("init-db", env=env)
        assert code == 0, out
        assert "database created" in out
        code, out = await run_cli(
            "seed", "--users", "10", "--events", "2", "--registrations", "5", env=env
        )
        assert code == 0, out
        # Cached details described the old rows: the reseed drops them, and only them.
        assert await redis_client.exists("club:event:1") == 0
        assert await redis_client.get("unrelated") == b"kept"
        conn = await asyncpg.connect(dsn)
        try:
            assert await conn.fetchval("SELECT count(*) FROM registrations") == 5
        finally:
            await conn.close()
    finally:
        admin = await asyncpg.connect(pg_server_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def test_cli_reports_a_config_error(tmp_path) -> None:
    code, out = await run_cli("--config-dir", str(tmp_path), "init-db", env={})
    assert code == 2
    assert "config error" in out
    assert "settings.toml" in out
