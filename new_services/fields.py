"""Tortoise fields for the legacy column types, and the epoch-int API boundary.

The legacy schema mixes `timestamptz` and `timestamp without time zone`, and
Tortoise 1.1.9 gets the second one wrong (compat-findings §3.2): with
``use_tz=True`` every write of a naive column fails, with ``use_tz=False``
aware inputs lose their offset. The fields below ignore the global timezone
state and always hand out aware UTC datetimes:

- `UTCDatetimeField` (timestamptz): read as aware UTC; a naive argument is UTC.
- `NaiveUTCDatetimeField` (timestamp): stored as UTC wall-clock time, the way
  PgBank's codec reads and writes it; an aware argument is converted to UTC
  first, never just stripped of its offset.

Neither field has ``auto_now``: the database defaults (``now()``) stay the only
clock, so both sides of the migration stamp rows alike.

`epoch_seconds` turns a datetime Python holds into the API's int: the same
floor and infinity rules as PgBank's codec (legacy_compat/_codecs.py), so a row
reads as the same int on both sides. Stored rows are read as ints computed in
SQL instead (`new_services.sql.epoch_sql`): PostgreSQL keeps years a datetime
cannot hold. asyncpg decodes ``infinity`` / ``-infinity`` to datetime.max / min,
whose floored epoch seconds are exactly PgBank's `TIMESTAMP_INFINITY` /
`TIMESTAMP_NEG_INFINITY`.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any, Final

from tortoise import fields

if TYPE_CHECKING:
    from tortoise.models import Model

__all__ = ["NaiveUTCDatetimeField", "TextKeyField", "UTCDatetimeField", "epoch_seconds"]

_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_SECOND: Final = dt.timedelta(seconds=1)


def _aware_utc(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


def epoch_seconds(value: dt.datetime) -> int:
    """Unix epoch seconds, floored (PgBank's rule); a naive value is UTC wall-clock."""
    return (_aware_utc(value) - _EPOCH) // _SECOND


class UTCDatetimeField(fields.DatetimeField):  # type: ignore[type-arg]
    """A `timestamptz` column, independent of Tortoise's global use_tz/timezone."""

    class _db_postgres:  # noqa: N801  (Tortoise's per-dialect naming)
        SQL_TYPE = "TIMESTAMPTZ"

    def to_python_value(self, value: Any) -> dt.datetime | None:
        if value is None:
            return None
        if not isinstance(value, dt.datetime):
            msg = f"{self.model_field_name}: expected a datetime from the driver, got {value!r}"
            raise TypeError(msg)
        return _aware_utc(value)

    def to_db_value(
        self,
        value: Any,
        instance: type[Model] | Model,  # noqa: ARG002  (Tortoise's signature)
    ) -> Any:
        if value is None:
            return None
        self.validate(value)
        return _aware_utc(value)


class NaiveUTCDatetimeField(UTCDatetimeField):
    """A `timestamp without time zone` column holding UTC wall-clock time."""

    SQL_TYPE = "TIMESTAMP"

    class _db_postgres:  # noqa: N801  (Tortoise's per-dialect naming)
        SQL_TYPE = "TIMESTAMP"

    def to_db_value(self, value: Any, instance: type[Model] | Model) -> Any:
        aware = super().to_db_value(value, instance)
        # asyncpg's timestamp encoder refuses aware values: send the UTC wall clock.
        return None if aware is None else aware.replace(tzinfo=None)


class TextKeyField(fields.CharField):  # type: ignore[type-arg]
    """A `text` primary key (Tortoise deprecates TextField keys; CharField is VARCHAR)."""

    def __init__(self, **kwargs: Any) -> None:
        # max_length only feeds validation; the column is unbounded text.
        super().__init__(max_length=1_000_000, **kwargs)

    @property
    def SQL_TYPE(self) -> str:  # type: ignore[override]  # noqa: N802  (Tortoise's name)
        return "TEXT"
