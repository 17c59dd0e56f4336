"""PgBank vs raw asyncpg on the same queries, interleaved rounds, median ratio.

Baseline: a raw asyncpg pool with no custom codecs (jsonb comes back as str,
timestamptz as datetime). Candidate: PgBank on the same server, decoding jsonb
with orjson and timestamps to int epoch seconds. Both pools hold one connection,
so every query runs on one warm backend. Goal (issue 2): PgBank <= 1.10x raw.

Uses CLUB_PG_DSN when set, otherwise an embedded PostgreSQL started here.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import orjson

from bench._results import markdown_table, record
from examples.devservices import start_services
from legacy_compat import PgBank, load_settings

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

ROUNDS = 9
BATCHES = 15  # per round: short alternating batches, so drift hits every side alike
ROWS = 1_000
FETCHROW_CALLS = 100  # per side per batch
FETCH100_CALLS = 15
DOC = {
    "title": "Evening run",
    "tags": ["sport", "outdoor", "club"],
    "limits": {"seats": 40, "waitlist": True},
    "hosts": [{"id": 1, "name": "Anna"}, {"id": 2, "name": "Boris"}],
}


async def _prepare(conn: Any, table: str) -> None:
    await conn.execute(
        f"CREATE TABLE {table} (id int PRIMARY KEY, name text, doc jsonb, created_at timestamptz)"
    )
    await conn.execute(
        f"INSERT INTO {table} SELECT i, 'event ' || i, $1::jsonb,"
        " timestamptz '2024-01-01' + i * interval '1 hour' FROM generate_series(1, $2) AS i",
        orjson.dumps(DOC).decode(),
        ROWS,
    )


def _workloads(
    table: str,
) -> dict[str, tuple[int, Callable[[Any, int], Awaitable[object]]]]:
    by_pk = f"SELECT id, name, doc, created_at FROM {table} WHERE id = $1"
    page = f"SELECT id, name, doc, created_at FROM {table} WHERE id > $1 ORDER BY id LIMIT 100"
    return {
        "fetchrow by primary key": (FETCHROW_CALLS, lambda db, i: db.fetchrow(by_pk, i % ROWS + 1)),
        "fetch 100 rows with jsonb": (FETCH100_CALLS, lambda db, i: db.fetch(page, (i * 7) % 900)),
    }


async def _timed(db: Any, calls: int, op: Callable[[Any, int], Awaitable[object]]) -> float:
    start = time.perf_counter()
    for i in range(calls):
        await op(db, i)
    return time.perf_counter() - start


class _DecodeInCaller:
    """Raw asyncpg plus what a caller must then do by hand: parse jsonb, convert times."""

    def __init__(self, pool: asyncpg.Pool[asyncpg.Record]) -> None:
        self._pool = pool

    async def fetchrow(self, sql: str, *args: object) -> object:
        row = await self._pool.fetchrow(sql, *args)
        return None if row is None else _decode(row)

    async def fetch(self, sql: str, *args: object) -> object:
        return [_decode(row) for row in await self._pool.fetch(sql, *args)]


def _decode(row: asyncpg.Record) -> tuple[object, int]:
    return orjson.loads(row["doc"]), int(row["created_at"].timestamp())


async def _round(
    sides: list[Any], calls: int, op: Callable[[Any, int], Awaitable[object]]
) -> list[float]:
    """Total seconds per side over BATCHES interleaved batches, rotating who goes first."""
    totals = [0.0] * len(sides)
    for batch in range(BATCHES):
        for k in range(len(sides)):
            side = (batch + k) % len(sides)
            totals[side] += await _timed(sides[side], calls, op)
    return totals


def _write_config(root: Path, dsn: str) -> None:
    (root / "settings.toml").write_text(
        'MAX_TRANSACTION_TIME = 30\nREDIS_URL = "redis://127.0.0.1:6379/0"\n', encoding="utf-8"
    )
    (root / "pg.toml").write_text(
        f'[club]\ndsn = "{dsn}"\nmin_size = 1\nmax_size = 1\n', encoding="utf-8"
    )
    (root / "info.toml").write_text('name = "bench"\n', encoding="utf-8")


async def _run(dsn: str) -> list[list[str]]:
    table = f"bench_pgbank_{uuid.uuid4().hex[:8]}"
    raw = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    with tempfile.TemporaryDirectory() as tmp:
        _write_config(Path(tmp), dsn)
        bank = await PgBank.connect(load_settings(tmp, environ={}))
    try:
        async with raw.acquire() as conn:
            await _prepare(conn, table)
        rows = []
        sides = [raw, bank.club, _DecodeInCaller(raw)]
        for name, (calls, op) in _workloads(table).items():
            for side in sides:  # warm statement caches and codecs
                await _timed(side, calls, op)
            times = [await _round(sides, calls, op) for _ in range(ROUNDS)]
            rows.append(_row(name, calls * BATCHES, times))
            print(f"{name}: {rows[-1]}", flush=True)
    finally:
        async with raw.acquire() as conn:
            await conn.execute(f"DROP TABLE IF EXISTS {table}")
        await raw.close()
        await bank.close()
    return rows


def _row(name: str, calls: int, times: list[list[float]]) -> list[str]:
    """Per-round ratios against raw asyncpg; their median decides."""
    raw, bank, by_hand = (statistics.median(t[i] for t in times) for i in range(3))
    ratios = [t[1] / t[0] for t in times]
    by_hand_ratios = [t[1] / t[2] for t in times]
    median = statistics.median(ratios)
    return [
        name,
        f"{calls / raw:,.0f}",
        f"{calls / bank:,.0f}",
        f"{median:.3f}x ({min(ratios):.2f}-{max(ratios):.2f})",
        "ok" if median <= 1.10 else "over goal",
        f"{calls / by_hand:,.0f}",
        f"{statistics.median(by_hand_ratios):.3f}x",
    ]


def main() -> None:
    # Redis is not used here; a placeholder keeps start_services from starting one.
    services = start_services(pg_dsn=os.environ.get("CLUB_PG_DSN") or None, redis_url="unused")
    try:
        rows = asyncio.run(_run(services.pg_dsn))
    finally:
        services.close()
    table = markdown_table(
        [
            "query",
            "raw asyncpg ops/s",
            "PgBank ops/s",
            "PgBank / raw time, median (range)",
            "goal <= 1.10x",
            "raw + decode in caller ops/s",
            "PgBank / decode in caller",
        ],
        rows,
    )
    record(
        "pgbank",
        f"PgBank vs a raw asyncpg pool without codecs (jsonb as str, timestamptz as datetime),"
        f" same server, one pooled connection each. {ROUNDS} rounds of {BATCHES} short batches"
        " per side, interleaved with the starting side rotating; ratio = PgBank time / raw time"
        " per round, median over rounds. The last two columns are for reading the ratio: raw"
        " asyncpg followed by the decoding a caller needs without PgBank (orjson.loads of the"
        f" jsonb column, datetime to epoch int).\n\n{table}",
    )


if __name__ == "__main__":
    main()
