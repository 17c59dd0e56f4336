"""The legacy PgBank codecs: jsonb/json as Python values, timestamps as int epoch seconds.

`install_codecs(conn)` runs in the `init` hook of PgBank's own pool, once per
physical connection. It must never run on Tortoise's pool: Tortoise writes JSON
as strings (they would be double-encoded) and expects datetimes.

Rules (docs/config-and-pgbank.md explains why):

- jsonb and json, both directions, binary format, orjson with `JSON_OPTIONS`. A
  `str` argument is a JSON string value: pass dicts and lists, not serialised text.
- timestamp and timestamptz come back as `int` Unix epoch seconds, floored (the
  second the instant falls in: 1969-12-31T23:59:59.5Z is -1). Arguments may be an
  `int` or `float` of epoch seconds or a `datetime`; floats and datetimes keep
  microseconds when stored. A naive datetime and a `timestamp without time zone`
  are both UTC wall-clock, so the session TimeZone never changes a value.
- PostgreSQL's `infinity` / `-infinity` read as `TIMESTAMP_INFINITY` /
  `TIMESTAMP_NEG_INFINITY` (asyncpg's default `datetime.max` / `datetime.min` in
  epoch seconds) and those two ints are written back as infinity.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import TYPE_CHECKING, Any, Final

import orjson

if TYPE_CHECKING:
    import asyncpg

__all__ = [
    "JSON_OPTIONS",
    "TIMESTAMP_INFINITY",
    "TIMESTAMP_NEG_INFINITY",
    "decode_jsonb",
    "decode_timestamp",
    "encode_jsonb",
    "encode_timestamp",
    "install_codecs",
]

# orjson.dumps options for every json/jsonb argument, pinned in one place. The legacy
# PgBank called orjson.dumps(value) without options, so: str keys only, naive
# datetimes without an offset, integers within 64 bits.
JSON_OPTIONS: Final = 0
TIMESTAMP_INFINITY: Final = 253_402_300_799  # 9999-12-31T23:59:59Z
TIMESTAMP_NEG_INFINITY: Final = -62_135_596_800  # 0001-01-01T00:00:00Z

_JSONB_VERSION: Final = b"\x01"  # the jsonb binary format's version prefix
_PG_EPOCH: Final = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
_PG_EPOCH_SECONDS: Final = 946_684_800  # 2000-01-01 in Unix seconds
_MICROS: Final = 1_000_000
# How PostgreSQL sends timestamp 'infinity' / '-infinity' in binary (int64 limits).
_PG_INFINITY: Final = 2**63 - 1
_PG_NEG_INFINITY: Final = -(2**63)
_ONE_MICROSECOND: Final = dt.timedelta(microseconds=1)


def encode_jsonb(value: Any) -> bytes:
    """A Python value as jsonb binary: the version byte, then the JSON text."""
    return _JSONB_VERSION + orjson.dumps(value, option=JSON_OPTIONS)


def decode_jsonb(data: bytes) -> Any:
    """jsonb binary as a Python value; an unknown version byte is an error, not a guess."""
    if not data or data[0] != _JSONB_VERSION[0]:
        msg = f"unsupported jsonb binary version {bytes(data[:1])!r}"
        raise ValueError(msg)
    return orjson.loads(data[1:])


def _encode_json(value: Any) -> bytes:
    # json (unlike jsonb) has no version byte in binary.
    return orjson.dumps(value, option=JSON_OPTIONS)


def encode_timestamp(value: object) -> tuple[int]:
    """Epoch seconds (int or float) or a datetime as PostgreSQL's microseconds since 2000."""
    if isinstance(value, bool):  # bool is an int subclass; True is never a time
        msg = f"expected epoch seconds or a datetime, got {value!r}"
        raise TypeError(msg)
    if isinstance(value, int):
        if value in {TIMESTAMP_INFINITY, TIMESTAMP_NEG_INFINITY}:
            return (_PG_INFINITY if value > 0 else _PG_NEG_INFINITY,)
        return ((value - _PG_EPOCH_SECONDS) * _MICROS,)
    if isinstance(value, float):
        if not math.isfinite(value):
            msg = f"epoch seconds must be finite, got {value!r}"
            raise ValueError(msg)
        return (round(value * _MICROS) - _PG_EPOCH_SECONDS * _MICROS,)
    if isinstance(value, dt.datetime):
        return (_datetime_micros(value),)
    msg = f"expected epoch seconds or a datetime, got {type(value).__name__}"
    raise TypeError(msg)


def _datetime_micros(value: dt.datetime) -> int:
    wall = value.replace(tzinfo=None)
    # asyncpg writes datetime.max/min as infinity; keep that so legacy callers agree.
    if wall == dt.datetime.max:  # noqa: DTZ901  (asyncpg's naive sentinel)
        return _PG_INFINITY
    if wall == dt.datetime.min:  # noqa: DTZ901  (asyncpg's naive sentinel)
        return _PG_NEG_INFINITY
    aware = value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)
    return (aware - _PG_EPOCH) // _ONE_MICROSECOND


def decode_timestamp(value: tuple[int]) -> int:
    """PostgreSQL's microseconds since 2000 as Unix epoch seconds, floored."""
    micros = value[0]
    if micros == _PG_INFINITY:
        return TIMESTAMP_INFINITY
    if micros == _PG_NEG_INFINITY:
        return TIMESTAMP_NEG_INFINITY
    return micros // _MICROS + _PG_EPOCH_SECONDS


async def install_codecs(conn: asyncpg.Connection[Any]) -> None:
    """Install the legacy codecs on one connection (the pool's `init` hook)."""
    await conn.set_type_codec(
        "jsonb", schema="pg_catalog", encoder=encode_jsonb, decoder=decode_jsonb, format="binary"
    )
    await conn.set_type_codec(
        "json", schema="pg_catalog", encoder=_encode_json, decoder=orjson.loads, format="binary"
    )
    for name in ("timestamp", "timestamptz"):
        await conn.set_type_codec(
            name,
            schema="pg_catalog",
            encoder=encode_timestamp,
            decoder=decode_timestamp,
            format="tuple",
        )
