"""An `Example` as the JSON the admin endpoint shows and the store keeps.

Bodies are cut at `MAX_EXAMPLE_BODY` bytes and given as text when they
decode as UTF-8 (a character split by the cut is left out), else as base64
with `"body_encoding": "base64"`. The example was redacted by the caller.
PostgreSQL's jsonb refuses the NUL character, so a body holding one is
base64 and a NUL anywhere else becomes U+FFFD.
"""

from __future__ import annotations

import base64
import codecs
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from proxy.shadow.model import Answer, Difference, Example

__all__ = ["MAX_EXAMPLE_BODY", "clean_text", "example_json", "iso_time"]

MAX_EXAMPLE_BODY: Final = 16 * 1024


def iso_time(at: float) -> str:
    """Unix time as ISO 8601 UTC: `2025-01-31T12:00:00.123456+00:00`."""
    return datetime.fromtimestamp(at, UTC).isoformat()


def example_json(example: Example) -> dict[str, Any]:
    """The JSON form of one example."""
    return {
        "at": iso_time(example.at),
        "method": example.method,
        "target": clean_text(example.target),
        "request_headers": _headers(example.request_headers),
        "primary": _answer(example.primary),
        "candidate": _answer(example.candidate),
        "secondary": None if example.secondary is None else _answer(example.secondary),
        "differences": [_difference(d) for d in example.differences],
    }


def _answer(answer: Answer) -> dict[str, Any]:
    cut = answer.body[:MAX_EXAMPLE_BODY]
    text = _utf8(cut, complete=len(cut) == len(answer.body))
    found: dict[str, Any] = {
        "status": answer.status,
        "headers": _headers(answer.headers),
        "latency": answer.latency,
    }
    if text is None:
        found["body"] = base64.b64encode(cut).decode("ascii")
        found["body_encoding"] = "base64"
    else:
        found["body"] = text
        found["body_encoding"] = "utf-8"
    found["body_truncated"] = answer.truncated or len(cut) < len(answer.body)
    return found


def _utf8(data: bytes, *, complete: bool) -> str | None:
    """`data` as text, or None when it is not UTF-8.

    A cut body may end inside a character: the incremental decoder keeps that
    tail back instead of failing, unless the body was whole.
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        text = decoder.decode(data, final=complete)
    except UnicodeDecodeError:
        return None
    return None if "\x00" in text else text


def clean_text(text: str) -> str:
    """`text` with NUL (which PostgreSQL text and jsonb refuse) as U+FFFD."""
    return text.replace("\x00", "\ufffd")


def _headers(headers: tuple[tuple[str, str], ...]) -> list[list[str]]:
    return [[clean_text(name), clean_text(value)] for name, value in headers]


def _difference(difference: Difference) -> dict[str, Any]:
    return {
        "path": clean_text(difference.path),
        "kind": difference.kind.value,
        "signature": clean_text(difference.signature),
        "primary": clean_text(difference.primary),
        "candidate": clean_text(difference.candidate),
    }
