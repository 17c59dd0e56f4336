"""Short renderings of values for `Difference.primary` and `Difference.candidate`."""

from __future__ import annotations

import hashlib
import json
from typing import Final

import orjson

__all__ = ["WIDTH", "describe_bytes", "render_json", "shorten"]

WIDTH: Final = 120  # characters kept of a value; the differences are read by people


def shorten(text: str, width: int = WIDTH) -> str:
    """`text`, cut to `width` characters with a trailing ellipsis when longer."""
    return text if len(text) <= width else text[: width - 1] + "…"


def render_json(value: object) -> str:
    """Compact JSON of `value`, shortened; keys keep their order, non-ASCII stays readable."""
    try:
        text = orjson.dumps(value).decode()
    except orjson.JSONEncodeError:
        # Integers beyond 64 bits (bodies json parsed instead of orjson).
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return shorten(text)


def describe_bytes(data: bytes) -> str:
    """`2048 bytes, sha256:0123456789ab`: enough to tell two binary bodies apart."""
    return f"{len(data)} bytes, sha256:{hashlib.sha256(data).hexdigest()[:12]}"
