"""Parity for timestamps PostgreSQL stores but Python's datetime cannot hold.

BC dates and years past 9999 are valid `timestamp` / `timestamptz` values.
club-api reads them through PgBank's codec as int epoch seconds; new_services
must answer the same bytes, on the details and on every list page holding
such a row, instead of failing in asyncpg's datetime decoder.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import asyncpg
import pytest

from legacy_compat import PgBank
from new_services.sql import epoch_sql
from tests.new_services.test_parity_reads import same_answer

if TYPE_CHECKING:
    from legacy_compat import Settings
    from tests.new_services.conftest import Twins

# Users 2001-2004 and events 2001-2004: both ends of PostgreSQL's range, and
# values that need more than a float's precision to floor correctly.
OUT_OF_RANGE_ROWS_SQL = """
INSERT INTO users (id, name, email, profile, active, created_at) VALUES
  (2001, 'Ancient', 'bc@club.example', '{}', true, '0044-03-15 12:00:00.5+00 BC'),
  (2002, 'Future', 'future@club.example', '{}', false, '20250-06-01 10:00:00+00'),
  (2003, 'First', 'first@club.example', '{}', true, '4714-11-24 00:00:00+00 BC'),
  (2004, 'Last', 'last@club.example', '{}', true, '294276-12-31 23:59:59.999999+00');
INSERT INTO events (id, title, meta, starts_at, capacity, active, updated_at) VALUES
  (2001, 'Far future', '{}', '20250-06-01 10:00', 5, true, '10000-01-01 00:00:00+00'),
  (2002, 'Antiquity', '{}', '0753-04-21 06:00:00.25 BC', 5, false, '0001-12-31 23:59:59.5+00 BC'),
  (2003, 'Range ends', '{}', '294276-12-31 23:59:59.999999', 5, true,
   '4714-11-24 00:00:00+00 BC'),
  (2004, 'Beyond', '{}', '4713-01-01 00:00:00.5 BC', 5, true, 'infinity');
INSERT INTO registrations (user_id, event_id) VALUES (1, 2001);
"""

CASES = [
    "/api/users/2001",
    "/api/users/2002",
    "/api/users/2003",
    "/api/users/2004",
    "/api/users?limit=100&offset=100",
    "/api/users?active=false",
    "/api/events/2001",
    "/api/events/2002",
    "/api/events/2003",
    "/api/events/2004",
    "/api/events?limit=100",
    "/api/events?active=false",
]


@pytest.fixture
async def far_twins(twins: Twins) -> Twins:
    for dsn in twins.dsns:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(OUT_OF_RANGE_ROWS_SQL)
        finally:
            await conn.close()
    return twins


@pytest.mark.parametrize("path", CASES)
async def test_out_of_range_timestamps_answer_as_legacy(far_twins: Twins, path: str) -> None:
    legacy, _ = await far_twins.both("GET", path)
    assert legacy.status == 200  # the reference answers, so must the new side
    problem = await same_answer(far_twins, "GET", path)
    assert problem is None, problem


async def test_out_of_range_values_spelled_out(far_twins: Twins) -> None:
    # The floor rule at both ends of the range, not only "same as legacy".
    async def get(path: str) -> dict[str, int]:
        resp = await far_twins.new.get(path)
        assert resp.status == 200, await resp.text()
        body: dict[str, int] = await resp.json()
        return body

    assert (await get("/api/users/2002"))["created_at"] == 576_874_173_600
    assert (await get("/api/users/2003"))["created_at"] == -210_866_803_200
    assert (await get("/api/users/2004"))["created_at"] == 9_224_318_015_999  # floored
    event = await get("/api/events/2003")
    assert (event["starts_at"], event["updated_at"]) == (9_224_318_015_999, -210_866_803_200)
    event = await get("/api/events/2004")
    assert (event["starts_at"], event["updated_at"]) == (-210_863_520_000, 253_402_300_799)


@pytest.mark.parametrize(
    "literal",
    [
        "'4714-11-24 00:00:00+00 BC'",  # PostgreSQL's first instant
        "'0001-01-01 00:00:00.5+00 BC'",  # just before Python's datetime.min
        "'1969-12-31 23:59:59.5+00'",  # the floor, not truncation
        "'9999-12-31 23:59:59+00'",  # reads as TIMESTAMP_INFINITY, as in the codec
        "'10000-01-01 00:00:00+00'",  # just after Python's datetime.max
        "'294276-12-31 23:59:59.999999+00'",  # PostgreSQL's last instant
        "'infinity'",
        "'-infinity'",
        "NULL",
    ],
)
@pytest.mark.parametrize("sql_type", ["timestamp", "timestamptz"])
async def test_epoch_sql_agrees_with_pgbank_codec(
    settings: Settings, literal: str, sql_type: str
) -> None:
    value = f"{literal}::{sql_type}"
    sql = f"SELECT {value} AS codec, {epoch_sql(value, naive=sql_type == 'timestamp')} AS sql"
    bank = await PgBank.connect(settings)
    async with bank, bank.club.transaction() as tx:
        # A non-UTC session (+05:45): neither side may depend on it.
        await tx.execute("SET LOCAL TimeZone = 'Asia/Kathmandu'")
        row = await tx.fetchrow(sql)
    assert row is not None
    assert row["sql"] == row["codec"]
