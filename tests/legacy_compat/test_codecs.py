"""The PgBank codecs on their own: golden wire values, the floor rule, infinity, bad input.

The wire values are what PostgreSQL sends in binary: jsonb is a version byte and
the JSON text; timestamps are int64 microseconds since 2000-01-01 (UTC).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from legacy_compat import TIMESTAMP_INFINITY, TIMESTAMP_NEG_INFINITY
from legacy_compat._codecs import decode_jsonb, decode_timestamp, encode_jsonb, encode_timestamp

PG_INFINITY = 2**63 - 1
PG_NEG_INFINITY = -(2**63)
UTC = dt.UTC


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        ({"a": 1}, b'\x01{"a":1}'),  # compact orjson text after the version byte
        ([1, None, True], b"\x01[1,null,true]"),  # JSON literals
        ("x", b'\x01"x"'),  # a str is a JSON string, never parsed
        ({"k": "клуб"}, b'\x01{"k":"\xd0\xba\xd0\xbb\xd1\x83\xd0\xb1"}'),  # UTF-8, not \u escapes
    ],
)
def test_jsonb_golden_bytes(value: Any, wire: bytes) -> None:
    assert encode_jsonb(value) == wire
    assert decode_jsonb(wire) == value


def test_jsonb_rejects_an_unknown_version_byte() -> None:
    with pytest.raises(ValueError, match="unsupported jsonb binary version"):
        decode_jsonb(b'\x02{"a":1}')


def test_jsonb_rejects_values_orjson_cannot_write() -> None:
    # Pinned JSON_OPTIONS = 0: non-str keys and ints over 64 bits are errors, as in legacy.
    with pytest.raises(TypeError):
        encode_jsonb({1: "a"})
    with pytest.raises(TypeError):
        encode_jsonb(2**64)


@pytest.mark.parametrize(
    ("epoch", "micros"),
    [
        (946_684_800, 0),  # 2000-01-01: PostgreSQL's epoch is zero on the wire
        (0, -946_684_800_000_000),  # the Unix epoch
        (1_700_000_000, 753_315_200_000_000),  # 2023-11-14T22:13:20Z
        (-1, -946_684_801_000_000),  # a negative epoch
        (TIMESTAMP_INFINITY, PG_INFINITY),  # the infinity policy, both ways
        (TIMESTAMP_NEG_INFINITY, PG_NEG_INFINITY),
    ],
)
def test_timestamp_golden_values(epoch: int, micros: int) -> None:
    assert encode_timestamp(epoch) == (micros,)
    assert decode_timestamp((micros,)) == epoch


@pytest.mark.parametrize(
    ("micros", "epoch"),
    [
        (-946_684_800_000_000 + 999_999, 0),  # 0.999999 s floors to 0
        (-946_684_800_000_000 - 500_000, -1),  # -0.5 s floors to -1, not 0
        (-946_684_800_000_000 - 1_000_000, -1),  # exactly -1 s
    ],
)
def test_decoding_floors_to_the_second(micros: int, epoch: int) -> None:
    assert decode_timestamp((micros,)) == epoch


@pytest.mark.parametrize(
    ("value", "epoch_micros"),
    [
        (dt.datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC), 1_700_000_000_000_000),  # aware UTC
        (
            dt.datetime(
                2023, 11, 15, 3, 58, 20, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=45))
            ),
            1_700_000_000_000_000,
        ),  # another offset, same instant
        (dt.datetime(2023, 11, 14, 22, 13, 20, 250), 1_700_000_000_000_250),  # naive = UTC, µs kept  # noqa: DTZ001
        (1_700_000_000.5, 1_700_000_000_500_000),  # float seconds keep microseconds
        (-0.25, -250_000),  # negative fraction
    ],
)
def test_encoding_datetimes_and_floats(value: object, epoch_micros: int) -> None:
    assert encode_timestamp(value) == (epoch_micros - 946_684_800_000_000,)


def test_datetime_extremes_are_infinity_like_asyncpg() -> None:
    assert encode_timestamp(dt.datetime.max) == (PG_INFINITY,)  # noqa: DTZ901
    assert encode_timestamp(dt.datetime.min.replace(tzinfo=UTC)) == (PG_NEG_INFINITY,)


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (True, TypeError),  # bool is an int subclass but never a time
        ("1700000000", TypeError),  # text is not parsed
        (dt.date(2023, 11, 14), TypeError),  # a date has no time of day
        (float("inf"), ValueError),  # not finite
        (float("nan"), ValueError),
    ],
)
def test_bad_timestamp_arguments(value: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        encode_timestamp(value)
