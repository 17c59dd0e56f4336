"""PgQueue in plain mode: real NOTIFYs on a real PostgreSQL."""

from __future__ import annotations

import asyncio
import itertools
from typing import TYPE_CHECKING

import asyncpg
import orjson
import pytest

from legacy_compat import (
    Backoff,
    DebounceMode,
    Event,
    NotifyPayloadTooLarge,
    PgQueue,
    QueueError,
    load_settings,
)
from tests.legacy_compat.pgqueue_support import Recorder, terminate_listener, wait_until

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Sequence
    from pathlib import Path


@pytest.fixture
async def sender(pg_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(pg_dsn)
    yield conn
    await conn.close()


async def notify(conn: asyncpg.Connection, *payloads: str) -> None:
    """Each payload in its own transaction (one transaction would merge duplicates)."""
    for payload in payloads:
        await conn.execute("SELECT pg_notify('events', $1)", payload)


def event_json(kind: str, **data: object) -> str:
    return orjson.dumps({"type": kind, **data}).decode()


async def test_routes_by_type_with_a_catch_all(pg_dsn: str, sender: asyncpg.Connection) -> None:
    registrations, cancellations, everything = Recorder(), Recorder(), Recorder()
    async with PgQueue(pg_dsn, window=0.05) as queue:
        queue.on("new_registration", registrations)
        queue.on("registration_cancelled", cancellations)
        queue.on_any(everything)
        await notify(
            sender,
            event_json("new_registration", user_id=1),
            event_json("registration_cancelled", user_id=1),
            event_json("unrouted", user_id=2),
        )
        await wait_until(lambda: len(everything.events) == 3)
    assert [e.payload["user_id"] for e in registrations.events] == [1]
    assert [e.type for e in cancellations.events] == ["registration_cancelled"]
    assert [e.type for e in everything.events] == [
        "new_registration",
        "registration_cancelled",
        "unrouted",
    ]
    # Plain mode: the payload as sent (type included), no outbox id or time.
    assert registrations.events[0] == Event(
        type="new_registration", payload={"type": "new_registration", "user_id": 1}
    )


async def test_a_database_trigger_event_reaches_its_handler(
    pg_dsn: str, sender: asyncpg.Connection
) -> None:
    # The reference club-api's own trigger (examples/club_api/schema.sql).
    got = Recorder()
    async with PgQueue(pg_dsn, window=0.05) as queue:
        queue.on("new_registration", got)
        user = await sender.fetchval(
            "INSERT INTO users (name, email) VALUES ('a', 'a@example.org') RETURNING id"
        )
        event = await sender.fetchval(
            "INSERT INTO events (title, starts_at, capacity) VALUES ('x', now(), 5) RETURNING id"
        )
        await sender.execute(
            "INSERT INTO registrations (user_id, event_id) VALUES ($1, $2)", user, event
        )
        await wait_until(lambda: len(got.events) == 1)
    assert got.events[0].payload == {"type": "new_registration", "user_id": user, "event_id": event}


async def test_coalesce_delivers_a_burst_of_10000_in_a_few_batches(
    pg_dsn: str, sender: asyncpg.Connection
) -> None:
    got = Recorder()
    async with PgQueue(pg_dsn, window=0.2) as queue:
        queue.on("burst", got)
        await sender.execute(
            "SELECT pg_notify('events', json_build_object('type', 'burst', 'n', n)::text)"
            " FROM generate_series(1, 10000) AS n"
        )
        await wait_until(lambda: len(got.events) == 10_000)
        stats = queue.stats()
    assert sorted(e.payload["n"] for e in got.events) == list(range(1, 10_001))
    # A handful of windows, not one call per event (or per 2 s sleep, as legacy).
    assert len(got.batches) <= 20
    assert max(len(batch) for batch in got.batches) >= 500
    assert stats.delivered == 10_000
    assert stats.dropped == 0


async def test_coalesce_merges_identical_payloads(pg_dsn: str, sender: asyncpg.Connection) -> None:
    got = Recorder()
    same, other = event_json("seat_changed", event_id=7), event_json("seat_changed", event_id=8)
    async with PgQueue(pg_dsn, window=1.0) as queue:
        queue.on("seat_changed", got)
        # One round trip, five transactions: all inside one window.
        statements = [f"BEGIN; SELECT pg_notify('events', '{p}'); COMMIT;" for p in [same] * 4]
        await sender.execute(" ".join([*statements, f"SELECT pg_notify('events', '{other}')"]))
        await wait_until(lambda: len(got.events) >= 2)
        stats = queue.stats()
    assert [e.payload["event_id"] for e in got.events] == [7, 8]
    assert stats.received == 5
    assert stats.merged == 3


async def test_legacy_mode_delivers_one_event_per_call_then_pauses(
    pg_dsn: str, sender: asyncpg.Connection
) -> None:
    calls: list[tuple[float, list[Event]]] = []

    async def handler(events: Sequence[Event]) -> None:
        calls.append((asyncio.get_running_loop().time(), list(events)))

    async with PgQueue(pg_dsn, mode=DebounceMode.LEGACY, window=0.05) as queue:
        queue.on("tick", handler)
        await notify(sender, *(event_json("tick", n=n) for n in range(4)))
        await wait_until(lambda: len(calls) == 4)
    assert [[e.payload["n"] for e in events] for _, events in calls] == [[0], [1], [2], [3]]
    # The legacy pause separates consecutive calls (a lower bound, never flaky).
    gaps = [later - earlier for (earlier, _), (later, _) in itertools.pairwise(calls)]
    assert min(gaps) >= 0.045


async def test_legacy_mode_buffer_is_bounded(pg_dsn: str, sender: asyncpg.Connection) -> None:
    release = asyncio.Event()
    got: list[int] = []

    async def slow(events: Sequence[Event]) -> None:
        got.extend(e.payload["n"] for e in events)
        await release.wait()

    async with PgQueue(pg_dsn, mode=DebounceMode.LEGACY, window=0, max_pending=10) as queue:
        queue.on("n", slow)
        await sender.execute(
            "SELECT pg_notify('events', json_build_object('type', 'n', 'n', n)::text)"
            " FROM generate_series(1, 100) AS n"
        )
        await wait_until(lambda: queue.stats().received == 100)
        release.set()
        accepted = 100 - queue.stats().dropped
        await wait_until(lambda: len(got) == accepted)
    # At most one event with the handler plus ten waiting; the rest refused and counted.
    assert accepted in (10, 11)
    assert got == list(range(1, accepted + 1))


async def test_bad_payloads_are_counted_and_the_listener_goes_on(
    pg_dsn: str, sender: asyncpg.Connection
) -> None:
    got = Recorder()
    async with PgQueue(pg_dsn, window=0.05) as queue:
        queue.on_any(got)
        await notify(
            sender,
            "not json",  # not JSON at all
            "[1, 2]",  # JSON, not an object
            '{"user_id": 1}',  # no type
            '{"type": ""}',  # empty type
            '{"type": 5}',  # type not a string
            event_json("ok"),
        )
        await wait_until(lambda: len(got.events) == 1)
        stats = queue.stats()
    assert [e.type for e in got.events] == ["ok"]
    assert stats.bad_payloads == 5


async def test_a_failing_handler_does_not_stop_the_others(
    pg_dsn: str, sender: asyncpg.Connection
) -> None:
    got = Recorder()
    failures = 0

    async def broken(events: Sequence[Event]) -> None:
        nonlocal failures
        failures += 1
        msg = "handler bug"
        raise RuntimeError(msg)

    async with PgQueue(pg_dsn, window=0.05) as queue:
        queue.on("x", broken)
        queue.on("x", got)
        await notify(sender, event_json("x", n=1))
        await wait_until(lambda: len(got.events) == 1)
        await notify(sender, event_json("x", n=2))
        await wait_until(lambda: len(got.events) == 2)
        stats = queue.stats()
    assert failures == 2
    assert stats.handler_errors == 2


async def test_notify_sends_the_legacy_format(pg_dsn: str) -> None:
    got = Recorder()
    async with PgQueue(pg_dsn, window=0.05) as queue:
        queue.on("new_registration", got)
        await queue.notify("new_registration", {"user_id": 123})
        await wait_until(lambda: len(got.events) == 1)
    assert got.events[0].payload == {"type": "new_registration", "user_id": 123}


async def test_notify_refuses_payloads_at_postgresql_limit(pg_dsn: str) -> None:
    got = Recorder()
    overhead = len(event_json("big", data=""))
    async with PgQueue(pg_dsn, window=0.05) as queue:
        queue.on("big", got)
        with pytest.raises(NotifyPayloadTooLarge, match="8000"):
            await queue.notify("big", {"data": "x" * (8000 - overhead)})
        # One byte less is what PostgreSQL still accepts: our limit is its limit.
        await queue.notify("big", {"data": "x" * (7999 - overhead)})
        await wait_until(lambda: len(got.events) == 1)
    assert len(orjson.dumps(got.events[0].payload)) == 7999


async def test_plain_mode_loses_what_is_sent_while_reconnecting(pg_dsn: str) -> None:
    # The flaw the durable mode fixes, shown rather than hidden: NOTIFYs sent
    # while the listener is away are gone, and only on_reconnect tells.
    got = Recorder()
    reconnected = asyncio.Event()

    async def on_reconnect() -> None:
        reconnected.set()

    # A fixed half-second pause before reconnecting makes the gap certain.
    backoff = Backoff(initial=0.5, maximum=0.5, jitter=0)
    queue = PgQueue(pg_dsn, window=0.05, on_reconnect=on_reconnect, backoff=backoff)
    queue.on("burst", got)
    async with queue:
        await produce_burst(pg_dsn, queue, got)
        await asyncio.wait_for(reconnected.wait(), 60)
        await queue.notify("burst", {"n": "sentinel"})
        await wait_until(lambda: any(e.payload["n"] == "sentinel" for e in got.events))
        stats = queue.stats()
    delivered = {e.payload["n"] for e in got.events} - {"sentinel"}
    assert len(delivered) < 10_000
    assert stats.reconnects == 1
    assert stats.connection_losses == 1


async def produce_burst(dsn: str, queue: PgQueue, got: Recorder) -> None:
    """10,000 NOTIFYs from 4 connections; the listener is killed at the halfway mark."""
    halfway = asyncio.Event()

    async def producer(first: int) -> None:
        conn = await asyncpg.connect(dsn)
        try:
            for n in range(first, 10_000, 4):
                if n >= 5_000:
                    await halfway.wait()
                await conn.execute("SELECT pg_notify('events', $1)", event_json("burst", n=n))
        finally:
            await conn.close()

    async def killer() -> None:
        await wait_until(lambda: len(got.events) >= 1_000)
        await terminate_listener(queue, dsn)
        halfway.set()

    await asyncio.gather(killer(), *(producer(k) for k in range(4)))


async def test_reconnects_after_termination_and_keeps_listening(pg_dsn: str) -> None:
    got = Recorder()
    async with PgQueue(pg_dsn, window=0.05, backoff=Backoff(initial=0.05)) as queue:
        queue.on("x", got)
        old = await terminate_listener(queue, pg_dsn)
        await wait_until(lambda: queue.listener_pid not in (None, old))
        await queue.notify("x", {"n": 1})
        await wait_until(lambda: len(got.events) == 1)
        assert queue.stats().reconnects == 1


async def test_accepts_legacy_settings(config_dir: Path) -> None:
    got = Recorder()
    settings = load_settings(config_dir)
    async with PgQueue(settings, window=0.05) as queue:
        queue.on("x", got)
        await queue.notify("x", {"n": 1})
        await wait_until(lambda: len(got.events) == 1)
    with pytest.raises(QueueError, match="no \\[reporting\\] database"):
        PgQueue(settings, database="reporting")


async def test_start_fails_clearly_when_the_server_is_unreachable(
    unused_tcp_port_factory: Callable[[], int],
) -> None:
    port = unused_tcp_port_factory()
    queue = PgQueue(f"postgresql://nobody@127.0.0.1:{port}/none")
    with pytest.raises(QueueError, match="cannot LISTEN"):
        await queue.start()
    await queue.stop()


async def test_cleanup_ctx_starts_and_stops_with_the_app(pg_dsn: str) -> None:
    from aiohttp import web  # noqa: PLC0415

    queue = PgQueue(pg_dsn, window=0.05)
    app = web.Application()
    app.cleanup_ctx.append(queue.cleanup_ctx)
    runner = web.AppRunner(app)
    await runner.setup()
    assert queue.listener_pid is not None
    await runner.cleanup()
    assert queue.listener_pid is None


async def test_counters_never_go_back_across_stop_and_start(pg_dsn: str) -> None:
    # Issue 17: stats() after stop() reported the listener's counters as 0, so a
    # Prometheus scrape after a stop saw counters go backwards.
    got = Recorder()
    queue = PgQueue(pg_dsn, window=0.05, backoff=Backoff(initial=0.05))
    queue.on("x", got)
    async with queue:
        old = await terminate_listener(queue, pg_dsn)
        await wait_until(lambda: queue.listener_pid not in (None, old))
        await queue.notify("x", {"n": 1})
        await wait_until(lambda: len(got.events) == 1)
        running = queue.stats()
    assert (running.connects, running.reconnects, running.connection_losses) == (2, 1, 1)
    assert running.notifications == 1

    stopped = queue.stats()
    assert stopped == running  # nothing arrived since: the same snapshot, not zeros

    async with queue:
        await queue.notify("x", {"n": 2})
        await wait_until(lambda: len(got.events) == 2)
        again = queue.stats()
    assert (again.connects, again.reconnects, again.connection_losses) == (3, 1, 1)
    assert (again.notifications, again.received, again.delivered) == (2, 2, 2)
    assert queue.stats() == again
