"""PgQueue's durable mode: the club_events outbox on a real PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import pytest

from legacy_compat import (
    Backoff,
    DatabaseError,
    DebounceMode,
    PgBank,
    PgQueue,
    QueueError,
    emit,
    load_settings,
)
from tests.conftest import database_dsn
from tests.legacy_compat.pgqueue_support import (
    IdempotentRecorder,
    Recorder,
    terminate_listener,
    wait_until,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from legacy_compat import Settings

OUTBOX_SQL = Path(__file__).resolve().parents[2] / "legacy_compat" / "sql" / "outbox.sql"


@pytest.fixture
async def writer(pg_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(pg_dsn)
    yield conn
    await conn.close()


def durable(dsn: str | Settings, name: str = "push", **options: Any) -> PgQueue:
    return PgQueue(dsn, durable=name, **options)


async def emit_many(
    dsn: str,
    count: int,
    *,
    producers: int = 4,
    kind: str = "e",
    pause_at: int | None = None,
    resume: asyncio.Event | None = None,
) -> list[int]:
    """`count` events, one transaction each, from concurrent connections (ids commit out of order).

    With `pause_at`, events numbered from there on wait for `resume`.
    """

    async def producer(first: int) -> list[int]:
        conn = await asyncpg.connect(dsn)
        ids = []
        try:
            for n in range(first, count, producers):
                if pause_at is not None and resume is not None and n >= pause_at:
                    await resume.wait()
                ids.append(await emit(conn, kind, {"n": n}))
        finally:
            await conn.close()
        return ids

    batches = await asyncio.gather(*(producer(k) for k in range(producers)))
    return sorted(i for batch in batches for i in batch)


async def test_emit_delivers_id_time_and_payload(pg_dsn: str, writer: asyncpg.Connection) -> None:
    got = Recorder()
    async with durable(pg_dsn) as queue:
        queue.on("new_registration", got)
        async with writer.transaction():
            new_id = await emit(writer, "new_registration", {"user_id": 5, "event_id": 9})
        await wait_until(lambda: len(got.events) == 1)
    event = got.events[0]
    assert (event.id, event.type, event.payload) == (
        new_id,
        "new_registration",
        {"user_id": 5, "event_id": 9},
    )
    now = await writer.fetchval("SELECT extract(epoch FROM now())::bigint")
    assert isinstance(event.created_at, int)
    assert abs(now - event.created_at) < 3600


async def test_created_at_is_floored_like_pgbank_reads_it(
    pg_dsn: str, writer: asyncpg.Connection
) -> None:
    # PgBank reads timestamps as the second the instant falls in; the event's
    # created_at must agree with it, not round up from .6.
    got = Recorder()
    async with durable(pg_dsn) as queue:
        queue.on_any(got)
        async with writer.transaction():
            new_id = await emit(writer, "e", {})
            await writer.execute(
                "UPDATE club_events SET created_at = to_timestamp(1700000000.6) WHERE id = $1",
                new_id,
            )
        await wait_until(lambda: len(got.events) == 1)
    assert got.events[0].created_at == 1_700_000_000


async def test_a_rolled_back_event_is_never_delivered(
    pg_dsn: str, writer: asyncpg.Connection
) -> None:
    got = Recorder()
    async with durable(pg_dsn) as queue:
        queue.on_any(got)
        tx = writer.transaction()
        await tx.start()
        lost_id = await emit(writer, "e", {"n": "rolled back"})
        await tx.rollback()
        # The rolled-back id leaves a gap the consumer must step over.
        kept_id = await emit(writer, "e", {"n": "kept"})
        await wait_until(lambda: len(got.events) == 1)
        await emit(writer, "e", {"n": "after"})
        await wait_until(lambda: len(got.events) == 2)
    assert kept_id > lost_id
    assert [e.payload["n"] for e in got.events] == ["kept", "after"]


async def test_id_order_holds_when_transactions_commit_out_of_order(
    pg_dsn: str, writer: asyncpg.Connection
) -> None:
    got = Recorder()
    async with durable(pg_dsn) as queue:
        queue.on_any(got)
        slow = await asyncpg.connect(pg_dsn)
        try:
            tx = slow.transaction()
            await tx.start()
            first = await emit(slow, "e", {"n": 1})
            second = await emit(writer, "e", {"n": 2})  # commits first
            # The wake-up for the second arrives; the consumer must wait for the first.
            await wait_until(lambda: queue.stats().notifications >= 1)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(got.changed.wait(), 0.5)
            await tx.commit()
        finally:
            await slow.close()
        await wait_until(lambda: len(got.events) == 2)
    assert [e.id for e in got.events] == [first, second]


async def test_restart_delivers_what_was_emitted_while_stopped(pg_dsn: str) -> None:
    async with durable(pg_dsn):
        pass  # registers consumer "push" at the current end of the outbox
    emitted = await emit_many(pg_dsn, 1_000)
    got = IdempotentRecorder()
    queue = durable(pg_dsn)
    queue.on("e", got)
    async with queue:
        await wait_until(lambda: len(got.handled) == 1_000)
    assert got.handled == emitted
    assert len(got.events) == 1_000  # a clean restart redelivers nothing


async def test_a_new_consumer_starts_at_the_end(pg_dsn: str, writer: asyncpg.Connection) -> None:
    await emit(writer, "e", {"n": "history"})
    got = Recorder()
    async with durable(pg_dsn, "late") as queue:
        queue.on_any(got)
        await emit(writer, "e", {"n": "new"})
        await wait_until(lambda: len(got.events) == 1)
    assert [e.payload["n"] for e in got.events] == ["new"]


async def test_reconnect_mid_burst_of_10000_loses_nothing(pg_dsn: str) -> None:
    got = IdempotentRecorder()
    reconnected = asyncio.Event()

    async def on_reconnect() -> None:
        reconnected.set()

    # The same fixed pause as the plain-mode test, where the gap loses events.
    queue = durable(pg_dsn, on_reconnect=on_reconnect, backoff=Backoff(initial=0.5, jitter=0))
    queue.on("e", got)
    async with queue:
        halfway = asyncio.Event()

        async def killer() -> None:
            await wait_until(lambda: len(got.handled) >= 1_000)
            await terminate_listener(queue, pg_dsn)
            halfway.set()  # the second half is written while the listener is away

        emitted, _ = await asyncio.gather(
            emit_many(pg_dsn, 10_000, pause_at=5_000, resume=halfway), killer()
        )
        await wait_until(lambda: len(got.handled) == 10_000)
        stats = queue.stats()
    assert reconnected.is_set()
    assert stats.reconnects == 1
    # Every event, each handled once thanks to its id, in id order.
    assert got.handled == emitted
    # At least once: what was in flight at the cut may come again, never more than a batch.
    assert len(got.events) - 10_000 == stats.redelivered <= 500


async def test_same_name_instances_handle_each_event_once(pg_dsn: str) -> None:
    first, second = IdempotentRecorder(), IdempotentRecorder()
    one, two = durable(pg_dsn, poll_interval=0.2), durable(pg_dsn, poll_interval=0.2)
    one.on("e", first)
    two.on("e", second)
    async with one, two:
        emitted = await emit_many(pg_dsn, 1_000)
        await wait_until(lambda: len(first.events) + len(second.events) == 1_000)
        leader, standby = (one, two) if first.events else (two, one)
        await leader.stop()
        # The standby takes over from the saved offset.
        emitted += await emit_many(pg_dsn, 200)
        await wait_until(lambda: len(first.events) + len(second.events) == 1_200)
        assert standby.stats().delivered == 200
    raw = [e.id or 0 for e in first.events + second.events]
    assert sorted(raw) == emitted  # each id exactly once in total


async def test_different_names_each_see_every_event(pg_dsn: str) -> None:
    push, mail = Recorder(), Recorder()
    async with durable(pg_dsn, "push") as a, durable(pg_dsn, "mail") as b:
        a.on_any(push)
        b.on_any(mail)
        emitted = await emit_many(pg_dsn, 500)
        await wait_until(lambda: len(push.events) == len(mail.events) == 500)
    assert [e.id for e in push.events] == emitted
    assert [e.id for e in mail.events] == emitted


async def test_legacy_mode_paces_durable_events_one_by_one(pg_dsn: str) -> None:
    got = Recorder()
    async with durable(pg_dsn, mode=DebounceMode.LEGACY, window=0.01) as queue:
        queue.on_any(got)
        emitted = await emit_many(pg_dsn, 5, producers=1)
        await wait_until(lambda: len(got.events) == 5)
    assert [len(batch) for batch in got.batches] == [1] * 5
    assert [e.id for e in got.events] == emitted


async def test_failing_handler_and_bad_wake_ups_do_not_stop_the_consumer(
    pg_dsn: str, writer: asyncpg.Connection
) -> None:
    got = Recorder()

    async def broken(events: object) -> None:
        msg = "handler bug"
        raise RuntimeError(msg)

    async with durable(pg_dsn) as queue:
        queue.on("e", broken)
        queue.on("e", got)
        await writer.execute("NOTIFY club_events, 'not an id'")
        await emit(writer, "e", {"n": 1})
        await wait_until(lambda: len(got.events) == 1)
        await emit(writer, "e", {"n": 2})
        await wait_until(lambda: len(got.events) == 2)
        stats = queue.stats()
    assert stats.bad_payloads == 1
    assert stats.handler_errors == 2


async def emit_then_fail(bank: PgBank) -> None:
    async with bank.club.transaction() as tx:
        await emit(tx, "never", {})
        raise RuntimeError


async def test_emit_through_pgbank_inside_its_transaction(config_dir: Path) -> None:
    settings = load_settings(config_dir)
    got = Recorder()
    async with await PgBank.connect(settings) as bank, durable(settings) as queue:
        queue.on_any(got)
        async with bank.club.transaction() as tx:
            await emit(tx, "new_registration", {"user_id": 1})
        with pytest.raises(RuntimeError):
            await emit_then_fail(bank)
        await emit(bank.club, "after", {"nested": {"a": [1, 2]}})
        await wait_until(lambda: len(got.events) == 2)
    # PgBank's jsonb codec does not double-encode: the payload is a JSON object.
    assert [(e.type, e.payload) for e in got.events] == [
        ("new_registration", {"user_id": 1}),
        ("after", {"nested": {"a": [1, 2]}}),
    ]


async def test_emit_errors_are_clear(writer: asyncpg.Connection, pg_server_dsn: str) -> None:
    with pytest.raises(QueueError):
        await emit(writer, "", {})
    # A database without the migration: the driver error arrives translated.
    conn = await asyncpg.connect(pg_server_dsn)
    try:
        with pytest.raises(DatabaseError) as caught:
            await emit(conn, "x", {"n": 1})
    finally:
        await conn.close()
    assert caught.value.sqlstate == "42883"  # undefined_function
    assert isinstance(caught.value.__cause__, asyncpg.PostgresError)


async def test_cleanup_keeps_what_a_consumer_still_needs(
    pg_dsn: str, writer: asyncpg.Connection
) -> None:
    async with durable(pg_dsn, "slow"):
        pass  # registered at id 0 and never consumes
    ids = await emit_many(pg_dsn, 10, producers=1)
    await writer.execute("UPDATE club_events SET created_at = now() - interval '30 days'")
    await writer.execute("UPDATE club_event_consumers SET last_id = $1", ids[4])
    assert await writer.fetchval("SELECT club_events_cleanup(interval '7 days')") == 5
    assert await writer.fetchval("SELECT min(id) FROM club_events") == ids[5]
    # max_age drops even unconsumed events: an abandoned consumer cannot pin the table.
    assert await writer.fetchval("SELECT club_events_cleanup(interval '7 days', '14 days')") == 5


async def test_migration_applies_to_an_empty_database_and_again(pg_server_dsn: str) -> None:
    name = f"club_outbox_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_server_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        conn = await asyncpg.connect(database_dsn(pg_server_dsn, name))
        try:
            for _ in range(2):  # idempotent: re-running it is harmless
                await conn.execute(OUTBOX_SQL.read_text(encoding="utf-8"))
            assert await conn.fetchval("SELECT club_emit('t', '{}')") == 1
        finally:
            await conn.close()
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


async def test_migration_reapplies_next_to_the_club_api_schema(
    writer: asyncpg.Connection,
) -> None:
    # The test template already holds schema.sql + outbox.sql; apply it again.
    await emit(writer, "before", {})
    await writer.execute(OUTBOX_SQL.read_text(encoding="utf-8"))
    assert await writer.fetchval("SELECT count(*) FROM club_events") == 1
    assert await writer.fetchval("SELECT to_regclass('registrations') IS NOT NULL")


async def test_durable_mode_needs_a_name(pg_dsn: str) -> None:
    with pytest.raises(QueueError):
        PgQueue(pg_dsn, durable="")
