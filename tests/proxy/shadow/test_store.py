"""The PostgreSQL store shared by replicas: one verdict, restarts, outages, migrations, retention.

Replicas are ShadowBook instances on one DSN. Outages are real: a DSN to a
closed port, or the test database refusing connections
(`ALLOW_CONNECTIONS false`) with the book's sessions terminated.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import asyncpg
import pytest

from proxy.routing.model import Shadow, ShadowStore, Verdict
from proxy.shadow._tally import MAX_GROUPS
from proxy.shadow.model import Answer, Difference, DiffKind, Example, Outcome, SkipReason
from proxy.shadow.results import MAX_PENDING_EXAMPLES, ShadowBook
from proxy.shadow.store import PgStore, migrations

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

ROUTE = "items"
SPEC = Shadow(to="new", verdict=Verdict(min_requests=10, min_match=0.9))
WAIT = 20.0


def change(path: str) -> Difference:
    return Difference(path=path, kind=DiffKind.CHANGED, primary="1", candidate="2")


def example() -> Example:
    side = Answer(status=200, headers=(), body=b"{}")
    return Example(
        at=1_700_000_000.0,
        method="GET",
        target="/api/items",
        request_headers=(),
        primary=side,
        candidate=side,
        secondary=None,
        differences=(change("$.a"),),
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Books:
    """Replicas on one store, all closed at the end of the test."""

    def __init__(self) -> None:
        self.opened: list[ShadowBook] = []

    async def open(self, store: ShadowStore, now: Callable[[], float] | None = None) -> ShadowBook:
        book = ShadowBook(store=store) if now is None else ShadowBook(store=store, now=now)
        book.configure({ROUTE: SPEC})
        await book.start()
        self.opened.append(book)
        return book


@pytest.fixture
async def books() -> AsyncIterator[Books]:
    found = Books()
    yield found
    for book in found.opened:
        await book.close()


@pytest.fixture
def store(pg_dsn: str) -> ShadowStore:
    return ShadowStore(dsn=pg_dsn, flush_interval=60.0)  # written on report() only


async def report(book: ShadowBook, *, ok: bool = True) -> dict[str, Any]:
    found = await book.report(ROUTE)
    assert found is not None
    assert found["store_ok"] is ok
    return found


async def fetchval(dsn: str, sql: str, *args: object) -> Any:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


async def test_two_replicas_give_one_verdict(store: ShadowStore, books: Books) -> None:
    one, two = await books.open(store), await books.open(store)
    for _ in range(6):
        one.compared(ROUTE, [], None, example)
    for _ in range(4):
        two.compared(ROUTE, [], None, example)
    one.compared(ROUTE, [change("$.a")], None, example)
    two.compared(ROUTE, [change("$.a")], None, example)
    two.skipped(ROUTE, SkipReason.SAMPLED_OUT)

    await report(one)  # each report writes the replica's own deltas, then reads the totals
    second = await report(two)
    first = await report(one)
    assert first == second
    assert (first["matched"], first["mismatched"], first["skipped"]) == (10, 2, {"sampled_out": 1})
    assert first["verdict"] == "not_ready"
    assert [(g["signature"], g["count"]) for g in first["differences"]] == [("changed:$.a", 2)]
    assert len(first["differences"][0]["examples"]) == 2  # one from each replica
    # This process's own counts stay its own (for its metrics).
    assert sorted(one.outcome_counts()) == [(ROUTE, "match", "", 6), (ROUTE, "mismatch", "", 1)]


async def test_noise_learned_by_one_replica_is_used_by_the_other(
    store: ShadowStore, books: Books
) -> None:
    learner, other = await books.open(store), await books.open(store)
    for _ in range(10):
        learner.compared(ROUTE, [], [change("$.updated_at")], example)
    await report(learner)
    assert other.compared(ROUTE, [change("$.updated_at")], None, example) is Outcome.MISMATCH
    await report(other)  # its write reads back what every replica learned
    assert other.compared(ROUTE, [change("$.updated_at")], None, example) is Outcome.NOISE


async def test_the_group_bound_holds_over_replicas(store: ShadowStore, books: Books) -> None:
    one, two = await books.open(store), await books.open(store)
    for n in range(150):
        one.compared(ROUTE, [change(f"$.one{n}")], None, example)
        two.compared(ROUTE, [change(f"$.two{n}")], None, example)
    await report(one)
    found = await report(two)
    assert len(found["differences"]) == MAX_GROUPS
    assert found["groups_dropped"] == 100
    assert found["mismatched"] == 300


async def test_results_survive_a_restart(store: ShadowStore, books: Books) -> None:
    book = await books.open(store)
    book.compared(ROUTE, [], None, example)
    book.compared(ROUTE, [change("$.a")], None, example)
    await book.close()  # writes what is pending; no report asked before

    again = await books.open(store)
    found = await report(again)
    assert (found["matched"], found["mismatched"]) == (1, 1)
    assert found["differences"][0]["examples"][0]["target"] == "/api/items"


async def test_the_flush_task_writes_on_its_own(pg_dsn: str, books: Books) -> None:
    book = await books.open(ShadowStore(dsn=pg_dsn, flush_interval=0.05))
    book.compared(ROUTE, [], None, example)
    sql = "SELECT n FROM club_proxy_shadow.outcomes WHERE route_id = $1 AND outcome = 'match'"
    async with asyncio.timeout(WAIT):
        while await fetchval(pg_dsn, sql, ROUTE) != 1:
            await asyncio.sleep(0.05)


async def test_an_unreachable_store_at_start(
    books: Books, caplog: pytest.LogCaptureFixture
) -> None:
    dsn = f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere"
    book = await books.open(ShadowStore(dsn=dsn, flush_interval=0.05))  # does not raise
    book.compared(ROUTE, [], None, example)
    book.compared(ROUTE, [change("$.a")], None, example)
    await asyncio.sleep(0.3)  # several failed writes in the background

    found = await report(book, ok=False)  # this process's own counts
    assert (found["matched"], found["mismatched"]) == (1, 1)
    listing = await book.report()
    assert listing is not None
    assert (listing["store"], listing["store_ok"]) == ("postgresql", False)
    assert await book.reset(ROUTE) is True
    assert caplog.messages.count("proxy.shadow.store_unavailable") == 1


@contextlib.asynccontextmanager
async def outage(pg_dsn: str, pg_server_dsn: str) -> AsyncIterator[None]:
    """The test database refuses connections and its sessions are ended, for the block."""
    database = urlsplit(pg_dsn).path.lstrip("/")
    admin = await asyncpg.connect(pg_server_dsn)
    try:
        await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", database
        )
        yield
    finally:
        await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
        await admin.close()


async def test_an_outage_mid_run_loses_no_count(
    pg_dsn: str, pg_server_dsn: str, books: Books, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="proxy.shadow")
    book = await books.open(ShadowStore(dsn=pg_dsn, flush_interval=0.05))
    book.compared(ROUTE, [], None, example)
    await report(book)

    async with outage(pg_dsn, pg_server_dsn):
        for _ in range(3):
            book.compared(ROUTE, [change("$.a")], None, example)
        for n in range(MAX_PENDING_EXAMPLES + 10):  # more examples than are kept while down
            book.compared(ROUTE, [change(f"$.b{n}")], None, example)
        await asyncio.sleep(0.3)  # several failed writes in the background
        down = await report(book, ok=False)
        assert (down["matched"], down["mismatched"]) == (1, 3 + MAX_PENDING_EXAMPLES + 10)
        # $.a wants an example per request (its first slots), each $.bN one: past the bound, dropped.
        assert down["examples_dropped"] == 13

    sql = "SELECT n FROM club_proxy_shadow.outcomes WHERE route_id = $1 AND outcome = 'mismatch'"
    async with asyncio.timeout(WAIT):  # written by the background task once the store is back
        while await fetchval(pg_dsn, sql, ROUTE) != 3 + MAX_PENDING_EXAMPLES + 10:
            await asyncio.sleep(0.05)
    back = await report(book)
    assert (back["matched"], back["examples_dropped"]) == (1, 13)
    assert sum(len(g["examples"]) for g in back["differences"]) == MAX_PENDING_EXAMPLES
    assert caplog.messages.count("proxy.shadow.store_unavailable") == 1
    assert caplog.messages.count("proxy.shadow.store_back") == 1


async def test_a_reset_during_an_outage_is_done_when_the_store_is_back(
    pg_dsn: str, pg_server_dsn: str, store: ShadowStore, books: Books
) -> None:
    book = await books.open(store)
    book.compared(ROUTE, [change("$.a")], None, example)
    await report(book)
    async with outage(pg_dsn, pg_server_dsn):
        assert await book.reset(ROUTE) is True
        book.compared(ROUTE, [], None, example)  # after the reset: kept
    found = await report(book)
    assert (found["matched"], found["mismatched"], found["differences"]) == (1, 0, [])


async def test_a_schema_dropped_under_the_book_is_migrated_again(
    store: ShadowStore, books: Books
) -> None:
    book = await books.open(store)
    book.compared(ROUTE, [], None, example)
    await report(book)
    conn = await asyncpg.connect(store.dsn)
    try:
        await conn.execute("DROP SCHEMA club_proxy_shadow CASCADE")
    finally:
        await conn.close()
    book.compared(ROUTE, [], None, example)
    await report(book, ok=False)  # this write finds no table, and the next one migrates first
    found = await report(book)
    assert found["matched"] == 1  # what was stored is gone with the schema; nothing since is lost


async def test_migrations_apply_once(pg_dsn: str) -> None:
    config = ShadowStore(dsn=pg_dsn)
    stores = [PgStore(config) for _ in range(3)]
    try:
        await asyncio.gather(*(s.connect() for s in stores))  # replicas starting together
        again = PgStore(config)
        await again.connect()
        await again.close()
    finally:
        for s in stores:
            await s.close()
    applied = await fetchval(
        pg_dsn,
        "SELECT array_agg(version ORDER BY version) FROM club_proxy_shadow.schema_migrations",
    )
    assert applied == [version for version, _ in migrations()]


async def test_retention_deletes_old_groups(pg_dsn: str, books: Books) -> None:
    now = [1_700_000_000.0]
    book = await books.open(
        ShadowStore(dsn=pg_dsn, retention=3600.0, flush_interval=60.0), lambda: now[0]
    )
    book.compared(ROUTE, [change("$.old")], None, example)
    await report(book)
    now[0] += 1800
    book.compared(ROUTE, [change("$.recent")], None, example)
    await report(book)
    now[0] += 1801  # $.old last seen 3601 s ago, $.recent 1801 s ago

    found = await report(book)
    assert [g["signature"] for g in found["differences"]] == ["changed:$.recent"]
    assert found["mismatched"] == 2  # counts are kept; only groups expire
    assert await fetchval(pg_dsn, "SELECT count(*) FROM club_proxy_shadow.examples") == 1


async def test_reset_reaches_every_replica(store: ShadowStore, books: Books) -> None:
    one, two = await books.open(store), await books.open(store)
    one.compared(ROUTE, [change("$.a")], None, example)
    await report(one)
    assert await two.reset(ROUTE) is True
    found = await report(one)
    assert (found["mismatched"], found["differences"]) == (0, [])
    assert await fetchval(store.dsn, "SELECT count(*) FROM club_proxy_shadow.examples") == 0


async def test_a_route_known_only_to_the_store(store: ShadowStore, books: Books) -> None:
    old = await books.open(store)
    old.compared(ROUTE, [], None, example)
    await old.close()
    book = ShadowBook(store=store)  # its route table no longer shadows the route
    books.opened.append(book)
    await book.start()
    found = await report(book)
    assert (found["active"], found["shadow_to"], found["min_requests"]) == (False, "new", 10)
