"""The legacy Packager format: Redis cache values as ``type:codec:payload`` strings.

club-api stores cache values as ASCII-safe strings whose first two fields say
how to rebuild the value, e.g. ``json:gzip:H4sIAAAAAAAC/6tWSs...``. The whole
format is the two tables below (``_TYPES`` and ``_CODECS`` in the code); matching
it to the real ``app/utils/packager.py`` later is a change to these tables only.

Types (how a Python value becomes bytes, checked in this order on pack)::

    name   python value            bytes                           example
    none   None                    empty                           none:plain:
    bool   bool                    b"1" / b"0"                     bool:plain:1
    int    int                     ASCII decimal, -?[0-9]+         int:plain:-42
    float  float                   repr(): 1.5, 1e-07, inf, nan    float:plain:0.25
    str    str                     UTF-8                           str:plain:hello
    bytes  bytes/bytearray         the bytes                       bytes:base64:AAE=
    json   dict, list, tuple       orjson.dumps (UTF-8 JSON)       json:plain:{"a":1}

Codecs (how the bytes become the payload; every type may use every codec)::

    name    payload                                           written when
    plain   the bytes as UTF-8 text (must be valid UTF-8)     default for all types but bytes
    base64  standard base64 (RFC 4648, padded)                default for bytes
    gzip    base64 of a gzip member of the bytes              bytes > compress_threshold and
                                                              the result is shorter

Writing is deterministic: the gzip header is fixed (no file name, mtime 0,
OS byte 255), so the same value always packs to the same string for a given
zlib build. Reading is strict and bounded: an unknown type or codec, invalid
UTF-8, bad base64, a broken or truncated gzip stream, trailing data, a payload
that does not parse as its type, or decoded bytes over ``max_decoded_size``
(a gzip bomb) raise `PackagerError`. Nothing is ever unpickled or imported.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import orjson

from legacy_compat.errors import PackagerError

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["Packager"]

DEFAULT_COMPRESS_THRESHOLD: Final = 1024
DEFAULT_MAX_DECODED_SIZE: Final = 16 * 1024 * 1024

# A fixed gzip header (RFC 1952): magic, deflate, no flags, mtime 0, no extra
# flags, OS "unknown". Python's gzip module varies the OS byte by version.
_GZIP_HEADER: Final = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
_INT_RE: Final = re.compile(rb"-?[0-9]+")
_FLOAT_RE: Final = re.compile(rb"-?(?:[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?|inf|nan)")


# --- types: value <-> bytes -------------------------------------------------


def _parse_int(raw: bytes) -> int:
    if not _INT_RE.fullmatch(raw):
        msg = "int payload is not a decimal integer"
        raise PackagerError(msg)
    return int(raw)


def _parse_float(raw: bytes) -> float:
    if not _FLOAT_RE.fullmatch(raw):
        msg = "float payload is not a decimal number"
        raise PackagerError(msg)
    return float(raw)


def _parse_bool(raw: bytes) -> bool:
    if raw not in {b"0", b"1"}:
        msg = "bool payload is not 0 or 1"
        raise PackagerError(msg)
    return raw == b"1"


def _parse_none(raw: bytes) -> None:
    if raw:
        msg = "none payload is not empty"
        raise PackagerError(msg)


def _parse_str(raw: bytes) -> str:
    return raw.decode("utf-8")


@dataclass(frozen=True, slots=True, kw_only=True)
class _Type:
    name: str
    accepts: tuple[type, ...]
    dump: Callable[[Any], bytes]
    load: Callable[[bytes], Any]
    codec: str  # "plain" or "base64": what pack writes at or below the threshold


# Order matters on pack: bool before int (bool is an int subclass).
_TYPES: Final[tuple[_Type, ...]] = (
    _Type(name="none", accepts=(type(None),), dump=lambda _: b"", load=_parse_none, codec="plain"),
    _Type(
        name="bool",
        accepts=(bool,),
        dump=lambda v: b"1" if v else b"0",
        load=_parse_bool,
        codec="plain",
    ),
    _Type(
        name="int",
        accepts=(int,),
        dump=lambda v: str(int(v)).encode(),
        load=_parse_int,
        codec="plain",
    ),
    _Type(
        name="float",
        accepts=(float,),
        dump=lambda v: repr(float(v)).encode(),
        load=_parse_float,
        codec="plain",
    ),
    _Type(name="str", accepts=(str,), dump=lambda v: v.encode(), load=_parse_str, codec="plain"),
    _Type(name="bytes", accepts=(bytes, bytearray), dump=bytes, load=bytes, codec="base64"),
    _Type(
        name="json",
        accepts=(dict, list, tuple),
        dump=orjson.dumps,
        load=orjson.loads,
        codec="plain",
    ),
)
_TYPES_BY_NAME: Final = {t.name: t for t in _TYPES}


# --- codecs: bytes <-> payload text -----------------------------------------


def _gzip(data: bytes, level: int) -> bytes:
    deflate = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = deflate.compress(data) + deflate.flush()
    trailer = struct.pack("<II", zlib.crc32(data), len(data) & 0xFFFFFFFF)
    return _GZIP_HEADER + body + trailer


def _gunzip(data: bytes, cap: int) -> bytes:
    # wbits=31: a gzip wrapper whose CRC32 and length trailer zlib verifies.
    inflate = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = inflate.decompress(data, cap + 1)
    except zlib.error as exc:
        msg = f"gzip payload is corrupt: {exc}"
        raise PackagerError(msg) from exc
    if len(out) > cap or inflate.unconsumed_tail:
        msg = f"gzip payload decompresses to more than {cap} bytes"
        raise PackagerError(msg)
    if not inflate.eof:
        msg = "gzip payload is truncated"
        raise PackagerError(msg)
    if inflate.unused_data:
        msg = "gzip payload has trailing data"
        raise PackagerError(msg)
    return out


def _b64decode(payload: str, cap: int) -> bytes:
    # Checked before decoding too, so an oversized payload is never decoded at all.
    if len(payload) // 4 * 3 > cap + 2:
        msg = f"base64 payload decodes to more than {cap} bytes"
        raise PackagerError(msg)
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        msg = f"payload is not valid base64: {exc}"
        raise PackagerError(msg) from exc
    if len(raw) > cap:
        msg = f"base64 payload decodes to more than {cap} bytes"
        raise PackagerError(msg)
    return raw


def _plain_decode(payload: str, cap: int) -> bytes:
    try:
        raw = payload.encode("utf-8")
    except UnicodeEncodeError as exc:
        msg = "plain payload is not valid Unicode text"
        raise PackagerError(msg) from exc
    if len(raw) > cap:
        msg = f"plain payload is larger than {cap} bytes"
        raise PackagerError(msg)
    return raw


_DECODERS: Final[dict[str, Callable[[str, int], bytes]]] = {
    "plain": _plain_decode,
    "base64": _b64decode,
    "gzip": lambda payload, cap: _gunzip(_b64decode(payload, cap), cap),
}
_CODECS: Final = frozenset(_DECODERS)


class Packager:
    """Packs values into legacy ``type:codec:payload`` strings and back.

    `compress_threshold` is the size in bytes of the raw value above which
    gzip is tried (kept only when the result is shorter); `max_decoded_size`
    caps the bytes any payload may decode to, compressed or not.
    """

    __slots__ = ("_compress_level", "_compress_threshold", "_max_decoded_size")

    def __init__(
        self,
        *,
        compress_threshold: int = DEFAULT_COMPRESS_THRESHOLD,
        max_decoded_size: int = DEFAULT_MAX_DECODED_SIZE,
        compress_level: int = 6,
    ) -> None:
        if compress_threshold < 0 or max_decoded_size <= 0 or not 0 <= compress_level <= 9:  # noqa: PLR2004
            msg = (
                "compress_threshold >= 0, max_decoded_size > 0 and compress_level 0..9 are required"
            )
            raise ValueError(msg)
        self._compress_threshold = compress_threshold
        self._max_decoded_size = max_decoded_size
        self._compress_level = compress_level

    def pack(self, value: Any) -> str:
        """The legacy string for `value`; `PackagerError` for a type not in the table."""
        kind = _type_of(value)
        try:
            raw = kind.dump(value)
        except (TypeError, ValueError, orjson.JSONEncodeError) as exc:
            msg = f"cannot pack {type(value).__name__}: {exc}"
            raise PackagerError(msg) from exc
        if kind.codec == "plain":
            # Every plain type dumps valid UTF-8 (str.encode already refused surrogates).
            plain = f"{kind.name}:plain:{raw.decode('utf-8')}"
        else:
            plain = f"{kind.name}:base64:{base64.b64encode(raw).decode('ascii')}"
        if len(raw) <= self._compress_threshold:
            return plain
        packed = base64.b64encode(_gzip(raw, self._compress_level)).decode("ascii")
        compressed = f"{kind.name}:gzip:{packed}"
        return compressed if len(compressed) < len(plain) else plain

    def unpack(self, text: str | bytes) -> Any:
        """The value `text` holds; `PackagerError` when it is not a valid legacy string."""
        if isinstance(text, bytes | bytearray | memoryview):
            try:
                text = bytes(text).decode("utf-8")
            except UnicodeDecodeError as exc:
                msg = "value is not valid UTF-8"
                raise PackagerError(msg) from exc
        parts = text.split(":", 2)
        if len(parts) != 3:  # noqa: PLR2004
            msg = "value is not in the type:codec:payload form"
            raise PackagerError(msg)
        type_name, codec, payload = parts
        kind = _TYPES_BY_NAME.get(type_name)
        if kind is None:
            msg = f"unknown type {type_name[:32]!r}"
            raise PackagerError(msg)
        decode = _DECODERS.get(codec)
        if decode is None:
            msg = f"unknown codec {codec[:32]!r}"
            raise PackagerError(msg)
        raw = decode(payload, self._max_decoded_size)
        try:
            return kind.load(raw)
        except PackagerError:
            raise
        except (ValueError, orjson.JSONDecodeError) as exc:
            msg = f"{type_name} payload is invalid: {exc}"
            raise PackagerError(msg) from exc


def _type_of(value: Any) -> _Type:
    for kind in _TYPES:
        if isinstance(value, kind.accepts):
            return kind
    msg = f"cannot pack {type(value).__name__}: not in the Packager type table"
    raise PackagerError(msg)
