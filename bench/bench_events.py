"""Durable events end to end (emit -> handler) against plain NOTIFY, same run.

Both sides use PgQueue on one embedded PostgreSQL: the durable outbox
(`emit` in the writer's transaction, consumer reads `club_events`) and the
plain mode (`pg_notify` with the legacy JSON payload, coalesce window 0, so
neither side waits on purpose). Three loads, rounds interleaved:

- burst: producers write flat out; events/s from the first write to the last
  handler call, and the latency each event saw under that load;
- paced: about 200 events/s; the latency when the queue is not the bottleneck;
- drain: the consumer side alone, events already committed.

Latency is write start -> handler call, on one clock (the same process).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson

from bench._results import markdown_table, record
from examples.devservices import start_services
from legacy_compat import PgQueue, emit

if TYPE_CHECKING:
    from collections.abc import Sequence

    from legacy_compat import Event

ROOT = Path(__file__).resolve().parent.parent
OUTBOX_SQL = ROOT / "legacy_compat" / "sql" / "outbox.sql"
ROUNDS = 5
BURST = 3_000
PACED = 400
PACED_RATE = 200.0
PRODUCERS = 4
DRAIN = 10_000

Results = dict[tuple[str, str], list[dict[str, float]]]


class Probe:
    """Handler that stamps each event's latency and says when all have arrived."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.latencies: dict[object, float] = {}
        self.done = asyncio.Event()
        self.last = 0.0

    async def __call__(self, events: Sequence[Event]) -> None:
        now = time.perf_counter()
        for event in events:
            self.latencies.setdefault(event.payload["n"], now - event.payload["t"])
        self.last = now
        if len(self.latencies) >= self.expected:
            self.done.set()


async def write(conn: asyncpg.Connection, *, durable: bool, n: int) -> None:
    """One business write plus its event, in one transaction, as a trigger would."""
    payload = {"n": n, "t": time.perf_counter()}
    async with conn.transaction():
        await conn.execute("INSERT INTO bench_writes (n) VALUES ($1)", n)
        if durable:
            await emit(conn, "bench", payload)
        else:
            text = orjson.dumps({"type": "bench", **payload}).decode()
            await conn.execute("SELECT pg_notify('events', $1)", text)


async def produce(dsn: str, *, durable: bool, count: int, rate: float | None) -> None:
    conns = [await asyncpg.connect(dsn) for _ in range(PRODUCERS)]
    try:

        async def producer(k: int) -> None:
            start = time.perf_counter()
            for i, n in enumerate(range(k, count, PRODUCERS)):
                if rate is not None:  # each producer keeps its share of the rate
                    delay = start + i * PRODUCERS / rate - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                await write(conns[k], durable=durable, n=n)

        await asyncio.gather(*(producer(k) for k in range(PRODUCERS)))
    finally:
        for conn in conns:
            await conn.close()


async def one_run(dsn: str, *, durable: bool, count: int, rate: float | None) -> dict[str, float]:
    probe = Probe(count)
    queue = (
        PgQueue(dsn, durable="bench", batch_size=500)
        if durable
        else PgQueue(dsn, window=0, max_pending=1_000_000)
    )
    queue.on("bench", probe)
    async with queue:
        start = time.perf_counter()
        await produce(dsn, durable=durable, count=count, rate=rate)
        await asyncio.wait_for(probe.done.wait(), 120)
    latencies = sorted(probe.latencies.values())
    return {
        "rate": count / (probe.last - start),
        "p50": statistics.median(latencies) * 1000,
        "p99": latencies[int(len(latencies) * 0.99) - 1] * 1000,
    }


async def drain_run(dsn: str, *, durable: bool, count: int) -> dict[str, float]:
    """Consumer side only: `count` events already written, how fast do they arrive."""
    probe = Probe(count)
    queue = (
        PgQueue(dsn, durable="drain", batch_size=500)
        if durable
        else PgQueue(dsn, window=0, max_pending=1_000_000)
    )
    # Its own type: the durable "bench" consumer must not pick these up later.
    queue.on("drain", probe)
    conn = await asyncpg.connect(dsn)
    try:
        if durable:
            async with queue:
                pass  # registers the consumer at the current end
            await conn.execute(
                "SELECT club_emit('drain', jsonb_build_object('n', n, 't', 0))"
                " FROM generate_series(1, $1::int) AS n",
                count,
            )
            start = time.perf_counter()
            async with queue:
                await asyncio.wait_for(probe.done.wait(), 120)
        else:
            async with queue:
                start = time.perf_counter()
                await conn.execute(
                    "SELECT pg_notify('events', json_build_object('type', 'drain', 'n', n,"
                    " 't', 0)::text) FROM generate_series(1, $1::int) AS n",
                    count,
                )
                await asyncio.wait_for(probe.done.wait(), 120)
    finally:
        await conn.close()
    return {"rate": count / (probe.last - start), "p50": float("nan"), "p99": float("nan")}


async def fresh_database(server_dsn: str) -> str:
    name = f"bench_events_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    dsn = urlunsplit(urlsplit(server_dsn)._replace(path=f"/{name}"))
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(OUTBOX_SQL.read_text(encoding="utf-8"))
        await conn.execute("CREATE TABLE bench_writes (id bigserial PRIMARY KEY, n int)")
    finally:
        await conn.close()
    return dsn


async def one_round(dsn: str, round_no: int, results: Results, *, keep: bool) -> None:
    for load in ("burst", "paced", "drain"):
        # Alternate which side goes first, so drift does not favour one.
        sides = (True, False) if round_no % 2 == 0 else (False, True)
        for durable in sides:
            side = "durable" if durable else "plain"
            if load == "drain":
                result = await drain_run(dsn, durable=durable, count=DRAIN)
            else:
                count, rate = (BURST, None) if load == "burst" else (PACED, PACED_RATE)
                result = await one_run(dsn, durable=durable, count=count, rate=rate)
            if keep:
                results.setdefault((load, side), []).append(result)
            print(f"round {round_no} {load:5} {side:7} {result}", flush=True)


async def run(server_dsn: str) -> str:
    dsn = await fresh_database(server_dsn)
    results: Results = {}
    await one_round(dsn, 0, results, keep=False)  # warm-up: caches, JIT of plans
    for round_no in range(1, ROUNDS + 1):
        await one_round(dsn, round_no, results, keep=True)
    return report(results)


def report(results: Results) -> str:
    def med(load: str, side: str, key: str) -> float:
        return statistics.median(r[key] for r in results[(load, side)])

    def cell(load: str, side: str, key: str, fmt: str) -> str:
        return "n/a" if load == "drain" and key != "rate" else format(med(load, side, key), fmt)

    rows = [
        [
            load,
            "plain NOTIFY (baseline)" if side == "plain" else "durable outbox",
            cell(load, side, "rate", ",.0f"),
            cell(load, side, "p50", ".1f"),
            cell(load, side, "p99", ".1f"),
        ]
        for load in ("burst", "paced", "drain")
        for side in ("plain", "durable")
    ]

    def ratio(load: str, key: str) -> float:
        return med(load, "durable", key) / med(load, "plain", key)

    table = markdown_table(["load", "side", "events/s", "p50 ms", "p99 ms"], rows)
    return (
        f"Emit -> handler through PgQueue on embedded PostgreSQL. burst: {PRODUCERS} "
        f"connections write {BURST:,} rows flat out, each with its event in the same "
        "transaction (durable: `emit`; plain: `pg_notify`, as a legacy trigger does). "
        f"paced: {PACED} such writes at ~{PACED_RATE:.0f}/s (events/s is just the offered "
        f"rate there). drain: the consumer side alone, {DRAIN:,} events already committed "
        "(durable: a backlog read after start; plain: one transaction of NOTIFYs). "
        f"Latency is write start -> handler call. Median of {ROUNDS} interleaved rounds "
        "after a warm-up round.\n\n"
        f"{table}\n\n"
        f"Durable / plain: burst throughput **{ratio('burst', 'rate'):.2f}x**, drain "
        f"throughput **{ratio('drain', 'rate'):.2f}x**, paced p50 latency "
        f"**{ratio('paced', 'p50'):.1f}x**, paced p99 **{ratio('paced', 'p99'):.1f}x**. "
        "The durable side pays one INSERT per event plus one fetch and one offset UPDATE "
        "per batch, and its consumer waits out commit-order gaps; in exchange nothing is "
        "lost across reconnects and restarts (tests/legacy_compat/test_outbox.py).\n"
    )


def main() -> None:
    server = os.environ.get("CLUB_BENCH_PG_DSN") or None
    services = start_services(pg_dsn=server, redis_url="redis://127.0.0.1:1/0")
    try:
        markdown = asyncio.run(run(services.pg_dsn))
    finally:
        services.close()
    print(markdown)
    record("bench_events", markdown)


if __name__ == "__main__":
    main()
