"""The custom fields against PostgreSQL: what Tortoise writes is what PgBank reads.

compat-findings §3.2: stock Tortoise 1.1.9 fails naive `timestamp` writes with
use_tz, drops offsets without it, and writes JSON strings when PgBank's codecs
leak into its pool. These write through the models and read back with PgBank.
"""

from __future__ import annotations

import datetime as dt

import pytest

from legacy_compat import PgBank
from new_services.events.models import Event
from new_services.fields import epoch_seconds
from new_services.services import _tortoise

PLUS3 = dt.timezone(dt.timedelta(hours=3))


@pytest.fixture
async def orm(settings):
    async with _tortoise(settings) as ctx:
        yield ctx


async def test_writes_read_back_identically_through_pgbank(orm, settings) -> None:
    event = await Event.create(
        title="t",
        meta={"b": [1, {"c": None}], "a": "é"},
        starts_at=dt.datetime(2026, 3, 1, 12, 0, 0, 500_000, tzinfo=PLUS3),  # 09:00:00.5 UTC
        capacity=1,
        updated_at=dt.datetime(2026, 3, 1, 9, 0),  # noqa: DTZ001  (naive means UTC)
    )
    async with await PgBank.connect(settings) as bank:
        row = await bank.club.fetchrow(
            "SELECT meta, jsonb_typeof(meta) AS kind, starts_at, starts_at::text AS wall,"
            " updated_at FROM events WHERE id = $1",
            event.id,
        )
    assert row is not None
    assert (row["kind"], row["meta"]) == ("object", {"a": "é", "b": [1, {"c": None}]})
    assert row["wall"] == "2026-03-01 09:00:00.5"  # converted to UTC, not stripped
    assert row["starts_at"] == epoch_seconds(event.starts_at) == 1772355600
    assert row["updated_at"] == 1772355600
    fetched = await Event.get(id=event.id)
    assert fetched.starts_at == dt.datetime(2026, 3, 1, 9, 0, 0, 500_000, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (dt.datetime(1970, 1, 1, tzinfo=dt.UTC), 0),  # the epoch
        (dt.datetime(1969, 12, 31, 23, 59, 59, 500_000, tzinfo=dt.UTC), -1),  # floor, not round
        (dt.datetime(2024, 1, 1, 3, 0, tzinfo=PLUS3), 1704067200),  # offset applied
        (dt.datetime(2024, 1, 1), 1704067200),  # noqa: DTZ001  (naive = UTC wall clock)
        (dt.datetime.max, 253402300799),  # noqa: DTZ901  (asyncpg infinity = TIMESTAMP_INFINITY)
        (dt.datetime.min.replace(tzinfo=dt.UTC), -62135596800),  # -infinity
    ],
)
def test_epoch_seconds_rules(value: dt.datetime, expected: int) -> None:
    assert epoch_seconds(value) == expected
