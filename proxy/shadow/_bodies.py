"""Bodies as the comparison reads them: Content-Encoding undone, media type read, JSON parsed.

Decoding is incremental with a bound on the output (`zlib` `max_length`,
brotli's `output_buffer_limit`), so a bomb costs at most the limit plus one
buffer before `Overflow` stops it. A body in an encoding this module cannot
undo (unknown, `br` without a bounded brotli, or a corrupt stream) comes back
as None: the caller compares its raw bytes.
"""

from __future__ import annotations

import codecs
import contextlib
import importlib
import json
import re
import zlib
from typing import Any, Final

import orjson

__all__ = [
    "NOT_JSON",
    "Overflow",
    "charset",
    "decode_body",
    "is_json_type",
    "is_text_type",
    "media_type",
    "parse_json",
]


class Overflow(Exception):
    """A body's decoded form is larger than the limit (compare raises BodyTooLarge)."""


def _bounded_brotli() -> Any:
    """The brotli module when it can bound its output (brotli >= 1.2), else None."""
    try:
        brotli = importlib.import_module("brotli")
    except ImportError:
        return None
    # Older brotli (and brotlicffi) expand a whole input at once: a bomb would
    # be inflated in full before its size could be checked.
    return brotli if hasattr(brotli.Decompressor(), "can_accept_more_data") else None


_BROTLI: Final = _bounded_brotli()
_GZIP_WBITS: Final = 16 + zlib.MAX_WBITS
_ZLIB_WBITS: Final = zlib.MAX_WBITS
_RAW_WBITS: Final = -zlib.MAX_WBITS
_ZLIB_HEADER: Final = 2
_DEFLATE_METHOD: Final = 8


def decode_body(body: bytes, content_encoding: str | None, limit: int) -> bytes | None:
    """`body` with its codings undone, last applied first; None when one cannot be undone.

    Raises `Overflow` as soon as the decoded form (or an unencoded body) passes `limit`.
    """
    codings = [c.strip().lower() for c in (content_encoding or "").split(",")]
    data = body
    for coding in reversed(codings):
        if coding in {"", "identity"}:
            continue
        step = _DECODERS.get(coding)
        if step is None:
            return None
        try:
            data = step(data, limit)
        except (zlib.error, _BrotliError):
            return None
    if len(data) > limit:
        raise Overflow
    return data


class _BrotliError(Exception):
    """brotli.error, re-raised under a name that exists without brotli."""


def _inflate(data: bytes, wbits: int, limit: int) -> bytes:
    out = bytearray()
    while True:
        stream = zlib.decompressobj(wbits)
        # One bounded call: output shorter than the bound means all input was read.
        out += stream.decompress(data, limit - len(out) + 1)
        if len(out) > limit:
            raise Overflow
        if not stream.eof:
            msg = "truncated stream"
            raise zlib.error(msg)
        data = stream.unused_data
        # gzip allows several members back to back; zlib and raw deflate do not.
        if wbits != _GZIP_WBITS or not data:
            return bytes(out)


def _gunzip(data: bytes, limit: int) -> bytes:
    return _inflate(data, _GZIP_WBITS, limit)


def _deflate(data: bytes, limit: int) -> bytes:
    # "deflate" is meant zlib-wrapped (RFC 9110) but some servers send raw
    # deflate; a zlib header is a CMF byte with method 8 and a check multiple of 31.
    header = data[:2]
    wrapped = (
        len(header) == _ZLIB_HEADER
        and header[0] & 0x0F == _DEFLATE_METHOD
        and int.from_bytes(header, "big") % 31 == 0
    )
    return _inflate(data, _ZLIB_WBITS if wrapped else _RAW_WBITS, limit)


def _unbrotli(data: bytes, limit: int) -> bytes:
    stream = _BROTLI.Decompressor()
    try:
        out = bytearray(stream.process(data, output_buffer_limit=limit + 1))
        while len(out) <= limit and not stream.is_finished():
            chunk = stream.process(b"", output_buffer_limit=limit + 1 - len(out))
            if not chunk:
                msg = "truncated stream"
                raise _BrotliError(msg)
            out += chunk
    except _BROTLI.error as exc:
        raise _BrotliError(str(exc)) from exc
    if len(out) > limit:
        raise Overflow
    return bytes(out)


_DECODERS: Final = {"gzip": _gunzip, "x-gzip": _gunzip, "deflate": _deflate}
if _BROTLI is not None:
    _DECODERS["br"] = _unbrotli


def media_type(content_type: str | None) -> str:
    """`Application/JSON; charset=utf-8` -> `application/json` ("" when absent)."""
    if not content_type:
        return ""
    return content_type.partition(";")[0].strip().lower()


def is_json_type(media: str) -> bool:
    """`application/json` or any `+json` type (`application/problem+json`)."""
    return media == "application/json" or media.endswith("+json")


def is_text_type(media: str) -> bool:
    """Read as text whatever the bytes: text/*, xml and javascript types."""
    return media.startswith("text/") or "xml" in media or "javascript" in media


_CHARSET: Final = re.compile(r";\s*charset\s*=\s*\"?([^\";\s]+)", re.IGNORECASE)


def charset(content_type: str | None) -> str:
    """The declared charset when Python knows it, else utf-8."""
    found = _CHARSET.search(content_type or "")
    if found is not None:
        with contextlib.suppress(LookupError):
            return codecs.lookup(found[1]).name
    return "utf-8"


# orjson turns an integer beyond 64 bits into a float, so two distinct large
# ids would compare equal: a body with a run of 19 digits is read by json
# instead. Found by mapping digits to "0" and the rest to " " and searching
# for the run: a tenth of the time of a regex search.
_DIGITS_TO_ZERO: Final = bytes(0x30 if 0x30 <= c <= 0x39 else 0x20 for c in range(256))  # noqa: PLR2004 - the ASCII digits
_LONG_RUN: Final = b"0" * 19
NOT_JSON: Final = object()  # what `parse_json` returns for a body that is not a JSON document


def parse_json(data: bytes) -> object:
    """The document in `data`, or `NOT_JSON` (also for NaN, Infinity and a depth json cannot read)."""
    if _LONG_RUN not in data.translate(_DIGITS_TO_ZERO):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            return NOT_JSON
    try:
        return json.loads(data.decode("utf-8"), parse_constant=_reject)
    except (ValueError, RecursionError):
        return NOT_JSON


def _reject(name: str) -> object:
    msg = f"{name} is not JSON"
    raise ValueError(msg)
