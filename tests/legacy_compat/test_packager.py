"""Packager: golden vectors, round trips and strict, bounded decoding."""

from __future__ import annotations

import base64
import gzip
import json
import math
import zlib
from pathlib import Path
from typing import Any

import orjson
import pytest

from legacy_compat import Packager, PackagerError

VECTORS = json.loads(
    (Path(__file__).parent.parent / "fixtures" / "legacy" / "packager_vectors.json").read_text(
        encoding="utf-8"
    )
)


def _value(vector: dict[str, Any]) -> Any:
    if vector["kind"] == "bytes":
        return base64.b64decode(vector["value"])
    if vector["kind"] == "float":
        return float(vector["value"])
    return vector["value"]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or (
            a == b and math.copysign(1, a) == math.copysign(1, b)
        )
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("vector", VECTORS["roundtrip"], ids=lambda v: v["name"])
def test_golden_pack_writes_the_exact_string(vector: dict[str, Any]) -> None:
    assert Packager().pack(_value(vector)) == vector["packed"]


@pytest.mark.parametrize(
    "vector", VECTORS["roundtrip"] + VECTORS["read_only"], ids=lambda v: v["name"]
)
def test_golden_unpack_reads_the_value(vector: dict[str, Any]) -> None:
    got = Packager().unpack(vector["packed"])
    assert _same(got, _value(vector)), (got, vector)
    # The same string arriving as bytes (a client without decode_responses).
    assert _same(Packager().unpack(vector["packed"].encode()), _value(vector))


@pytest.mark.parametrize("vector", VECTORS["invalid"], ids=lambda v: v["name"])
def test_golden_invalid_strings_raise_packager_error(vector: dict[str, Any]) -> None:
    with pytest.raises(PackagerError):
        Packager().unpack(vector["packed"])


def test_vectors_cover_every_type_and_codec() -> None:
    written = {tuple(v["packed"].split(":", 2)[:2]) for v in VECTORS["roundtrip"]}
    assert {t for t, _ in written} == {"none", "bool", "int", "float", "str", "bytes", "json"}
    read = written | {tuple(v["packed"].split(":", 2)[:2]) for v in VECTORS["read_only"]}
    assert {c for _, c in read} == {"plain", "base64", "gzip"}


def test_reads_the_documented_club_api_form() -> None:
    # json:gzip:<base64 of gzip of the JSON bytes>, written the way a legacy
    # writer would: stdlib gzip with the current time in the header.
    payload = {"type": "new_registration", "user_id": 123}
    text = "json:gzip:" + base64.b64encode(gzip.compress(orjson.dumps(payload))).decode()
    assert Packager().unpack(text) == payload


def test_gzip_output_is_deterministic_and_standard() -> None:
    value = {"rows": list(range(2000))}
    first = Packager().pack(value)
    assert first == Packager().pack(value)
    kind, codec, payload = first.split(":", 2)
    assert (kind, codec) == ("json", "gzip")
    raw = base64.b64decode(payload)
    assert raw[4:8] == b"\0\0\0\0"  # mtime 0
    # Any standard gunzip reads it (the legacy side uses the stdlib).
    assert orjson.loads(gzip.decompress(raw)) == value


@pytest.mark.parametrize(
    ("threshold", "size", "codec"),
    [
        (1024, 1024, "plain"),  # at the threshold: not compressed
        (1024, 1025, "gzip"),  # just above: compressed
        (0, 2, "plain"),  # tiny value: gzip would be longer, so plain is kept
        (10_000, 5000, "plain"),  # a raised threshold
    ],
)
def test_compresses_above_the_threshold(threshold: int, size: int, codec: str) -> None:
    text = Packager(compress_threshold=threshold).pack("a" * size)
    assert text.split(":", 2)[1] == codec
    assert Packager().unpack(text) == "a" * size


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(("a", 1), id="tuple-becomes-list"),
        pytest.param({"nested": {"deep": [1, {"x": None}]}}, id="nested"),
        pytest.param(bytearray(b"\x00abc"), id="bytearray-becomes-bytes"),
        pytest.param("x" * 100_000, id="large-str"),
        pytest.param(-(10**200), id="large-negative-int"),
    ],
)
def test_round_trip(value: Any) -> None:
    packer = Packager()
    got = packer.unpack(packer.pack(value))
    if isinstance(value, tuple):
        assert got == list(value)
    elif isinstance(value, bytearray):
        assert got == bytes(value)
    else:
        assert got == value


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(object(), id="object"),
        pytest.param({1, 2}, id="set"),
        pytest.param({1: "non-str-key"}, id="json-non-str-key"),
        pytest.param("\ud800", id="lone-surrogate"),
        pytest.param(10**5000, id="int-over-str-digit-limit"),
    ],
)
def test_pack_refuses_values_outside_the_table(value: Any) -> None:
    with pytest.raises(PackagerError):
        Packager().pack(value)


def _gz(data: bytes) -> str:
    return base64.b64encode(gzip.compress(data, mtime=0)).decode()


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("bytes:gzip:" + _gz(b"\0" * 2049), id="gzip-bomb-over-cap"),
        pytest.param(
            "bytes:base64:" + base64.b64encode(b"x" * 2049).decode(), id="base64-over-cap"
        ),
        pytest.param("str:plain:" + "x" * 2049, id="plain-over-cap"),
    ],
)
def test_decoded_size_is_capped(text: str) -> None:
    with pytest.raises(PackagerError, match="2048"):
        Packager(max_decoded_size=2048).unpack(text)


def test_cap_is_inclusive() -> None:
    assert Packager(max_decoded_size=2048).unpack("bytes:gzip:" + _gz(b"\0" * 2048)) == b"\0" * 2048


def test_bomb_never_allocates_the_whole_output() -> None:
    # 1 GiB of zeros compresses to about 1 MiB; the cap stops inflation at 1 KiB.
    deflate = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = b"\0" * (1 << 20)
    body = b"".join(deflate.compress(chunk) for _ in range(1024)) + deflate.flush()
    with pytest.raises(PackagerError, match="more than 1024 bytes"):
        Packager(max_decoded_size=1024).unpack("bytes:gzip:" + base64.b64encode(body).decode())


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"str:plain:\xff\xfe", id="invalid-utf8-bytes"),
        pytest.param(b"\x80json:plain:{}", id="invalid-utf8-prefix"),
    ],
)
def test_invalid_utf8_input(raw: bytes) -> None:
    with pytest.raises(PackagerError, match="UTF-8"):
        Packager().unpack(raw)


def test_json_nesting_limit_is_an_error_not_a_crash() -> None:
    with pytest.raises(PackagerError):
        Packager().unpack("json:plain:" + "[" * 100_000 + "]" * 100_000)


@pytest.mark.parametrize(
    "kwargs",
    [{"compress_threshold": -1}, {"max_decoded_size": 0}, {"compress_level": 10}],
)
def test_constructor_validates(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="required"):
        Packager(**kwargs)
