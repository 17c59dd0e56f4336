"""PgBank against a real PostgreSQL: the legacy query surface, codecs, errors, the guard."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import TYPE_CHECKING, Any

import asyncpg
import pytest
from aiohttp import web

from legacy_compat import (
    TIMESTAMP_INFINITY,
    TIMESTAMP_NEG_INFINITY,
    DatabaseError,
    PgBank,
    Settings,
    TransactionTimeout,
    load_settings,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from pytest_aiohttp import AiohttpClient


def settings_with(config_dir: Path, **env: str) -> Settings:
    return load_settings(config_dir, environ=env)


@pytest.fixture
async def bank(settings: Settings) -> AsyncIterator[PgBank]:
    async with await PgBank.connect(settings) as bank:
        await bank.club.execute(
            "CREATE TABLE probe (id int PRIMARY KEY, doc jsonb, raw json,"
            " at timestamptz, wall timestamp, email text UNIQUE)"
        )
        yield bank


async def test_each_database_is_an_attribute(bank: PgBank) -> None:
    assert bank.club is bank.database("club")
    with pytest.raises(AttributeError, match="no database 'billing'"):
        _ = bank.billing
    with pytest.raises(KeyError, match="have: club"):
        bank.database("billing")


async def test_the_four_legacy_methods(bank: PgBank) -> None:
    assert await bank.club.execute("INSERT INTO probe (id) VALUES ($1), ($2)", 1, 2) == "INSERT 0 2"
    row = await bank.club.fetchrow("SELECT id FROM probe WHERE id = $1", 2)
    assert row is not None
    assert row["id"] == 2
    assert await bank.club.fetchrow("SELECT id FROM probe WHERE id = $1", 99) is None
    assert [r["id"] for r in await bank.club.fetch("SELECT id FROM probe ORDER BY id")] == [1, 2]
    assert await bank.club.fetchval("SELECT count(*) FROM probe") == 2
    assert await bank.club.fetchval("SELECT id, id * 10 FROM probe WHERE id = 2", column=1) == 20


NESTED = {"user": {"id": 7, "tags": ["a", "b"], "meta": {"deep": [1, {"x": None}]}}, "ok": True}


@pytest.mark.parametrize(
    "value",
    [
        {"a": 1},  # flat object
        NESTED,  # nested objects and arrays
        [1, "two", 3.5, None, False],  # a top-level array
        {"emoji": "клуб ☕", "quote": 'a "b" \\ c'},  # non-ASCII and escapes
        0,  # a scalar number is a valid document
        {},  # empty object
    ],
)
async def test_jsonb_round_trips_through_a_column(bank: PgBank, value: Any) -> None:
    await bank.club.execute("INSERT INTO probe (id, doc) VALUES (1, $1)", value)
    assert await bank.club.fetchval("SELECT doc FROM probe") == value


async def test_jsonb_argument_is_a_document_on_the_server(bank: PgBank) -> None:
    # The server sees a real object (not a string holding JSON) and can index into it.
    assert await bank.club.fetchval("SELECT jsonb_typeof($1::jsonb)", NESTED) == "object"
    assert await bank.club.fetchval("SELECT $1::jsonb #>> '{user,meta,deep,0}'", NESTED) == "1"
    # Documents built by SQL come back decoded, no json.loads needed.
    assert await bank.club.fetchval("SELECT jsonb_build_object('n', 1, 'l', '[2]'::jsonb)") == {
        "n": 1,
        "l": [2],
    }


async def test_a_str_argument_is_a_json_string_not_parsed_text(bank: PgBank) -> None:
    # The documented double-encoding rule: pass dicts, not serialised JSON.
    assert await bank.club.fetchval("SELECT jsonb_typeof($1::jsonb)", '{"a":1}') == "string"


async def test_json_keeps_text_order_and_jsonb_normalises(bank: PgBank) -> None:
    raw = await bank.club.fetchval("""SELECT '{"bb": 1, "a": 2}'::json""")
    normalised = await bank.club.fetchval("""SELECT '{"bb": 1, "a": 2}'::jsonb""")
    assert list(raw) == ["bb", "a"]
    assert list(normalised) == ["a", "bb"]
    await bank.club.execute("INSERT INTO probe (id, raw) VALUES (1, $1)", NESTED)
    assert await bank.club.fetchval("SELECT raw FROM probe") == NESTED
    assert await bank.club.fetchval("SELECT json_typeof(raw) FROM probe") == "object"


async def test_jsonb_arrays_and_nulls(bank: PgBank) -> None:
    assert await bank.club.fetchval("SELECT $1::jsonb[]", [{"a": 1}, {"b": 2}]) == [
        {"a": 1},
        {"b": 2},
    ]
    assert await bank.club.fetchval("SELECT NULL::jsonb") is None
    await bank.club.execute("INSERT INTO probe (id, doc) VALUES (1, $1)", None)
    assert await bank.club.fetchval("SELECT doc IS NULL FROM probe") is True
    # JSON null inside a document is not SQL NULL.
    assert await bank.club.fetchval("SELECT 'null'::jsonb IS NULL") is False


@pytest.mark.parametrize(
    "epoch",
    [
        0,  # the Unix epoch itself
        1_700_000_000,  # 2023-11-14T22:13:20Z
        -1,  # one second before the epoch
        -2_208_988_800,  # 1900-01-01: a negative epoch far back
        946_684_800,  # PostgreSQL's own epoch (2000-01-01): zero on the wire
        4_102_444_800,  # 2100-01-01
        # PostgreSQL's range beyond Python's datetime (issue 17): never through datetime.
        -210_866_803_200,  # 4714-11-24 BC, PostgreSQL's first second
        -62_167_219_200,  # 0001-01-01 BC
        576_874_173_600,  # 20250-06-01 10:00
        9_224_318_015_999,  # 294276-12-31 23:59:59, PostgreSQL's last second
    ],
)
async def test_timestamps_round_trip_as_int_epoch_seconds(bank: PgBank, epoch: int) -> None:
    await bank.club.execute("INSERT INTO probe (id, at, wall) VALUES (1, $1, $2)", epoch, epoch)
    row = await bank.club.fetchrow(
        "SELECT at, wall, extract(epoch FROM at)::bigint AS e FROM probe"
    )
    assert row is not None
    assert (row["at"], row["wall"], row["e"]) == (epoch, epoch, epoch)


async def test_datetime_arguments_and_the_utc_rule(bank: PgBank) -> None:
    moscow = dt.timezone(dt.timedelta(hours=3))
    aware = dt.datetime(2023, 11, 15, 1, 13, 20, tzinfo=moscow)
    naive = dt.datetime(2023, 11, 14, 22, 13, 20)  # noqa: DTZ001  (naive on purpose: read as UTC)
    assert await bank.club.fetchval("SELECT $1::timestamptz", aware) == 1_700_000_000
    assert await bank.club.fetchval("SELECT $1::timestamptz", naive) == 1_700_000_000
    # timestamp without time zone holds UTC wall-clock time.
    text = await bank.club.fetchval("SELECT $1::timestamp::text", 1_700_000_000)
    assert text == "2023-11-14 22:13:20"
    assert await bank.club.fetchval("SELECT '2023-11-14 22:13:20'::timestamp") == 1_700_000_000


async def test_sub_second_precision_is_stored_and_floored_on_read(bank: PgBank) -> None:
    assert await bank.club.fetchval("SELECT $1::timestamptz", 1_700_000_000.75) == 1_700_000_000
    micros = "SELECT extract(microseconds FROM $1::timestamptz)::int % 1000000"
    assert await bank.club.fetchval(micros, 1_700_000_000.75) == 750_000
    # Floor, not truncation: half a second before the epoch is in second -1.
    assert await bank.club.fetchval("SELECT '1969-12-31 23:59:59.5+00'::timestamptz") == -1
    assert await bank.club.fetchval("SELECT $1::timestamptz", -0.5) == -1


async def test_timestamp_nulls_arrays_and_comparisons(bank: PgBank) -> None:
    assert await bank.club.fetchval("SELECT NULL::timestamptz") is None
    await bank.club.execute("INSERT INTO probe (id, at) VALUES (1, $1), (2, NULL)", 100)
    assert await bank.club.fetchval("SELECT count(*) FROM probe WHERE at IS NULL") == 1
    # The parameter type comes from the server, so an int compares with a column.
    assert await bank.club.fetchval("SELECT id FROM probe WHERE at > $1", 99) == 1
    assert await bank.club.fetchval("SELECT $1::timestamptz[]", [0, -5]) == [0, -5]


async def test_infinity_policy(bank: PgBank) -> None:
    assert await bank.club.fetchval("SELECT 'infinity'::timestamptz") == TIMESTAMP_INFINITY
    assert await bank.club.fetchval("SELECT '-infinity'::timestamp") == TIMESTAMP_NEG_INFINITY
    sql = "SELECT $1::timestamptz = 'infinity', $2::timestamptz = '-infinity'"
    row = await bank.club.fetchrow(sql, TIMESTAMP_INFINITY, TIMESTAMP_NEG_INFINITY)
    assert tuple(row or ()) == (True, True)


async def test_session_time_zone_changes_no_value(config_dir: Path) -> None:
    settings = settings_with(config_dir, CLUB_PG__CLUB__SERVER_SETTINGS__TIMEZONE="Asia/Kathmandu")
    async with await PgBank.connect(settings) as bank:
        assert await bank.club.fetchval("SHOW TimeZone") == "Asia/Kathmandu"
        text = await bank.club.fetchval("SELECT $1::timestamptz::text", 1_700_000_000)
        assert text == "2023-11-15 03:58:20+05:45"
        assert await bank.club.fetchval("SELECT '2023-11-15 03:58:20+05:45'::timestamptz") == (
            1_700_000_000
        )
        # timestamp without time zone is wall-clock UTC whatever the session says.
        assert await bank.club.fetchval("SELECT '2023-11-14 22:13:20'::timestamp") == 1_700_000_000
        assert await bank.club.fetchval("SELECT $1::timestamp::text", 1_700_000_000) == (
            "2023-11-14 22:13:20"
        )


@pytest.mark.parametrize(
    "bad",
    [
        "2023-11-14",  # text is not a timestamp argument
        True,  # bool is not epoch seconds
        float("nan"),  # not a time
    ],
)
async def test_bad_timestamp_arguments_are_database_errors(bank: PgBank, bad: object) -> None:
    with pytest.raises(DatabaseError) as info:
        await bank.club.fetchval("SELECT $1::timestamptz", bad)
    # asyncpg rejects the argument client-side as data_exception, before any SQL runs.
    assert info.value.sqlstate == "22000"
    assert isinstance(info.value.__cause__, asyncpg.DataError)


async def test_codecs_stay_on_pgbank_connections(bank: PgBank, pg_dsn: str) -> None:
    # A plain asyncpg connection (as Tortoise opens) still sees str and datetime.
    conn = await asyncpg.connect(pg_dsn)
    try:
        assert await conn.fetchval("""SELECT '{"a": 1}'::jsonb""") == '{"a": 1}'
        assert isinstance(await conn.fetchval("SELECT now()"), dt.datetime)
    finally:
        await conn.close()
    assert isinstance(await bank.club.fetchval("SELECT now()"), int)


async def test_unique_violation_keeps_sqlstate_constraint_and_cause(bank: PgBank) -> None:
    await bank.club.execute("INSERT INTO probe (id, email) VALUES (1, 'a@b.c')")
    with pytest.raises(DatabaseError) as info:
        await bank.club.execute("INSERT INTO probe (id, email) VALUES (2, 'a@b.c')")
    assert info.value.sqlstate == "23505"
    assert info.value.constraint_name == "probe_email_key"
    assert isinstance(info.value.__cause__, asyncpg.UniqueViolationError)
    with pytest.raises(DatabaseError) as syntax:
        await bank.club.fetch("SELEC 1")
    assert syntax.value.sqlstate == "42601"


async def test_transaction_commits_and_rolls_back(bank: PgBank) -> None:
    async with bank.club.transaction() as tx:
        await tx.execute("INSERT INTO probe (id) VALUES (1)")
        assert await tx.fetchval("SELECT count(*) FROM probe") == 1

    async def fail_in_python() -> None:
        async with bank.club.transaction() as tx:
            await tx.execute("INSERT INTO probe (id) VALUES (2)")
            raise ValueError("boom")

    async def fail_in_sql() -> None:
        async with bank.club.transaction() as tx:
            await tx.execute("INSERT INTO probe (id) VALUES (3)")
            await tx.execute("INSERT INTO probe (id) VALUES (1)")

    with pytest.raises(ValueError, match="boom"):
        await fail_in_python()
    with pytest.raises(DatabaseError) as info:
        await fail_in_sql()
    assert info.value.sqlstate == "23505"
    assert [r["id"] for r in await bank.club.fetch("SELECT id FROM probe")] == [1]


async def test_callers_own_timeout_is_not_a_transaction_timeout(bank: PgBank) -> None:
    async def own_timeout() -> None:
        async with bank.club.transaction() as tx:
            await tx.execute("INSERT INTO probe (id) VALUES (1)")
            raise TimeoutError

    with pytest.raises(TimeoutError):
        await own_timeout()
    assert await bank.club.fetchval("SELECT count(*) FROM probe") == 0


@pytest.fixture
async def one_conn_bank(config_dir: Path) -> AsyncIterator[PgBank]:
    """A bank with a single pooled connection and a 0.5 s MAX_TRANSACTION_TIME."""
    settings = settings_with(
        config_dir,
        CLUB_SETTINGS__MAX_TRANSACTION_TIME="0.5",
        CLUB_PG__CLUB__MIN_SIZE="1",
        CLUB_PG__CLUB__MAX_SIZE="1",
    )
    async with await PgBank.connect(settings) as bank:
        await bank.club.execute("CREATE TABLE probe (id int PRIMARY KEY)")
        yield bank


@pytest.mark.parametrize("body", ["query", "client"])
async def test_max_transaction_time_cancels_rolls_back_and_keeps_the_connection(
    one_conn_bank: PgBank, pg_dsn: str, body: str
) -> None:
    bank = one_conn_bank
    pid = await bank.club.fetchval("SELECT pg_backend_pid()")

    async def overrun() -> None:
        async with asyncio.timeout(60), bank.club.transaction() as tx:
            await tx.execute("INSERT INTO probe (id) VALUES (1)")
            if body == "query":  # stuck in the database
                await tx.execute("SELECT pg_sleep(60)")
            else:  # stuck in Python between queries
                await asyncio.sleep(60)

    with pytest.raises(TransactionTimeout) as info:
        await overrun()
    assert "rolled back" in str(info.value)
    # Same (only) connection, outside any transaction, and the insert is gone.
    assert await bank.club.fetchval("SELECT pg_backend_pid()") == pid
    assert await bank.club.fetchval("SELECT count(*) FROM probe") == 0
    async with bank.club.transaction() as tx:
        await tx.execute("INSERT INTO probe (id) VALUES (2)")
    assert await bank.club.fetchval("SELECT array_agg(id) FROM probe") == [2]
    # The cancelled pg_sleep is not left running on the server.
    conn = await asyncpg.connect(pg_dsn)
    try:
        sql = "SELECT state FROM pg_stat_activity WHERE pid = $1"
        assert await conn.fetchval(sql, pid) == "idle"
    finally:
        await conn.close()


async def test_backstops_ride_in_server_settings_and_survive_release(one_conn_bank: PgBank) -> None:
    bank = one_conn_bank
    # Derived from MAX_TRANSACTION_TIME = 0.5: 0.5 + max(0.5, 1) = 1.5 s.
    assert await bank.club.fetchval("SHOW idle_in_transaction_session_timeout") == "1500ms"
    await bank.club.execute("SET idle_in_transaction_session_timeout = 0")
    # The release ran RESET ALL; the startup value comes back, a SET would not.
    assert await bank.club.fetchval("SHOW idle_in_transaction_session_timeout") == "1500ms"


async def test_configured_statement_timeout_is_enforced(config_dir: Path) -> None:
    settings = settings_with(config_dir, CLUB_PG__CLUB__SERVER_SETTINGS__STATEMENT_TIMEOUT="200ms")
    async with await PgBank.connect(settings) as bank:
        with pytest.raises(DatabaseError) as info:
            await bank.club.execute("SELECT pg_sleep(30)")
    assert info.value.sqlstate == "57014"  # query_canceled


async def test_command_timeout_is_a_client_side_database_error(config_dir: Path) -> None:
    settings = settings_with(config_dir, CLUB_PG__CLUB__COMMAND_TIMEOUT="0.2")
    async with await PgBank.connect(settings) as bank:
        with pytest.raises(DatabaseError) as info:
            await bank.club.execute("SELECT pg_sleep(30)")
        assert info.value.sqlstate is None
        assert isinstance(info.value.__cause__, TimeoutError)
        assert await bank.club.fetchval("SELECT 1") == 1


async def test_pool_recovers_when_the_server_backstop_fires(config_dir: Path) -> None:
    # The backstop set below the client guard, so the server acts first.
    settings = settings_with(
        config_dir,
        CLUB_PG__CLUB__SERVER_SETTINGS__IDLE_IN_TRANSACTION_SESSION_TIMEOUT="200ms",
        CLUB_PG__CLUB__MIN_SIZE="1",
        CLUB_PG__CLUB__MAX_SIZE="1",
    )
    async with await PgBank.connect(settings) as bank:
        before = await bank.club.fetchval("SELECT pg_backend_pid()")

        async def idle_too_long() -> None:
            async with bank.club.transaction() as tx:
                await tx.execute("SELECT 1")
                await asyncio.sleep(1.5)  # idle in transaction past 200 ms
                await tx.execute("SELECT 1")

        with pytest.raises(DatabaseError) as info:
            await idle_too_long()
        # A driver error, passed through (not masked by the rollback attempt).
        assert not isinstance(info.value, TransactionTimeout)
        assert isinstance(info.value.__cause__, asyncpg.InterfaceError)
        # The terminated connection was replaced, not handed out again.
        assert await bank.club.fetchval("SELECT pg_backend_pid()") != before


async def test_connect_failure_is_a_database_error_and_leaves_no_pool(
    config_dir: Path, pg_dsn: str, unused_tcp_port_factory: Any
) -> None:
    port = unused_tcp_port_factory()
    with (config_dir / "pg.toml").open("a", encoding="utf-8") as f:
        f.write(f'\n[zz_broken]\ndsn = "postgresql://nobody@127.0.0.1:{port}/none"\n')
    settings = settings_with(config_dir, CLUB_PG__CLUB__SERVER_SETTINGS__APPLICATION_NAME="leak")
    with pytest.raises(DatabaseError, match="zz_broken") as info:
        await PgBank.connect(settings)
    assert isinstance(info.value.__cause__, OSError)
    conn = await asyncpg.connect(pg_dsn)
    try:
        sql = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'leak'"
        async with asyncio.timeout(30):
            while await conn.fetchval(sql):
                await asyncio.sleep(0.05)
    finally:
        await conn.close()


BANK = web.AppKey("bank", PgBank)


async def test_cleanup_ctx_serves_requests(
    settings: Settings, aiohttp_client: AiohttpClient
) -> None:
    async def handler(request: web.Request) -> web.Response:
        row = await request.app[BANK].club.fetchrow("SELECT $1::jsonb AS doc", {"n": 1})
        assert row is not None
        return web.json_response(row["doc"])

    app = web.Application()
    app.cleanup_ctx.append(PgBank.cleanup_ctx(settings, BANK))
    app.router.add_get("/", handler)
    client = await aiohttp_client(app)
    resp = await client.get("/")
    assert await resp.json() == {"n": 1}


def _reset_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    """asyncpg's complaint, through the loop's exception handler, when a release finds a
    transaction it does not know was closed."""
    return [r.getMessage() for r in caplog.records if "active transaction" in r.getMessage()]


async def test_a_failed_body_rolls_back_through_the_transaction_object(
    one_conn_bank: PgBank, caplog: pytest.LogCaptureFixture
) -> None:
    # Issue 17: a raw ROLLBACK left asyncpg's transaction object open, so every
    # refused request logged "Resetting connection with an active transaction".
    bank = one_conn_bank
    pid = await bank.club.fetchval("SELECT pg_backend_pid()")

    async def refused() -> None:
        async with bank.club.transaction() as tx:
            await tx.execute("INSERT INTO probe (id) VALUES (1)")
            raise ValueError("refused")

    async def failed_in_sql() -> None:
        async with bank.club.transaction() as tx:
            await tx.execute("INSERT INTO probe (id) VALUES (1), (1)")

    with caplog.at_level(logging.DEBUG):
        for _ in range(3):
            with pytest.raises(ValueError, match="refused"):
                await refused()
            with pytest.raises(DatabaseError):
                await failed_in_sql()
        # The one connection is usable afterwards: outside any transaction, and it commits.
        assert await bank.club.fetchval("SELECT pg_backend_pid()") == pid
        assert await bank.club.fetchval("SELECT count(*) FROM probe") == 0
        async with bank.club.transaction() as tx:
            await tx.execute("INSERT INTO probe (id) VALUES (2)")
        assert await bank.club.fetchval("SELECT array_agg(id) FROM probe") == [2]
    assert _reset_warnings(caplog) == []
