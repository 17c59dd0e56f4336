"""Two bodies compared: decoded, then as JSON, as text (first differing line) or as bytes.

JSON when either side's Content-Type says so (`application/json`,
`*/*+json`) and both bodies parse; when only one parses, one `type_changed`
at `body`. Otherwise text when both sides read as text (a text/*, xml,
javascript or JSON media type, decoded with its charset; else valid UTF-8),
else bytes: `length` when the lengths differ, else `changed` with hashes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from proxy.shadow._bodies import (
    NOT_JSON,
    Overflow,
    charset,
    decode_body,
    is_json_type,
    is_text_type,
    media_type,
    parse_json,
)
from proxy.shadow._jsondiff import diff_json
from proxy.shadow._render import WIDTH, describe_bytes, render_json, shorten
from proxy.shadow.model import Difference, DiffKind

if TYPE_CHECKING:
    from proxy.shadow._jsonpath import PathState

__all__ = ["Body", "diff_bodies"]

_BODY = "body"


class Body(NamedTuple):
    """One side's body as received, with the two headers that say how to read it."""

    data: bytes
    content_type: str | None
    content_encoding: str | None


class _Read(NamedTuple):
    data: bytes  # decoded, or raw when `opaque`
    opaque: bool  # its coding could not be undone: only its bytes are compared
    media: str
    content_type: str | None


def diff_bodies(
    primary: Body, candidate: Body, *, limit: int, paths: PathState | None
) -> list[Difference]:
    """The differences between two bodies; raises Overflow(side) past `limit` decoded.

    Identical raw bodies with the same coding are equal without being decoded.
    """
    if primary.data == candidate.data and primary.content_encoding == candidate.content_encoding:
        return []
    a, b = _read(primary, limit, "primary"), _read(candidate, limit, "candidate")
    if a.data == b.data:
        return []
    if is_json_type(a.media) or is_json_type(b.media):
        found = _json(a, b, paths)
        if found is not None:
            return found
    text_a, text_b = _text(a), _text(b)
    if text_a is not None and text_b is not None:
        line = _line_difference(text_a, text_b)
        return [] if line is None else [line]
    kind = DiffKind.LENGTH if len(a.data) != len(b.data) else DiffKind.CHANGED
    return [
        Difference(
            path=_BODY, kind=kind, primary=describe_bytes(a.data), candidate=describe_bytes(b.data)
        )
    ]


def _read(body: Body, limit: int, side: str) -> _Read:
    try:
        decoded = decode_body(body.data, body.content_encoding, limit)
    except Overflow:
        raise Overflow(side) from None
    media = media_type(body.content_type)
    if decoded is None:
        return _Read(body.data, opaque=True, media=media, content_type=body.content_type)
    return _Read(decoded, opaque=False, media=media, content_type=body.content_type)


def _json(a: _Read, b: _Read, paths: PathState | None) -> list[Difference] | None:
    """The JSON differences, or None when neither side is JSON (compared as text or bytes)."""
    doc_a = NOT_JSON if a.opaque else parse_json(a.data)
    doc_b = NOT_JSON if b.opaque else parse_json(b.data)
    if doc_a is not NOT_JSON and doc_b is not NOT_JSON:
        try:
            return diff_json(doc_a, doc_b, paths)
        except RecursionError:
            return None  # nested deeper than Python walks: compared as text instead
    if doc_a is NOT_JSON and doc_b is NOT_JSON:
        return None
    return [
        Difference(
            path=_BODY,
            kind=DiffKind.TYPE_CHANGED,
            primary=_preview(doc_a, a),
            candidate=_preview(doc_b, b),
        )
    ]


def _preview(document: object, body: _Read) -> str:
    if document is not NOT_JSON:
        return render_json(document)
    text = _text(body)
    return describe_bytes(body.data) if text is None else shorten(text)


def _text(body: _Read) -> str | None:
    if body.opaque:
        return None
    if is_text_type(body.media) or is_json_type(body.media):
        return body.data.decode(charset(body.content_type), errors="replace")
    try:
        return body.data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _line_difference(a: str, b: str) -> Difference | None:
    """`changed` at `body` with the first differing line of each side ("" past a side's end)."""
    if a == b:
        return None
    lines_a, lines_b = a.splitlines(keepends=True), b.splitlines(keepends=True)
    number = next(
        (n for n, (x, y) in enumerate(zip(lines_a, lines_b, strict=False), 1) if x != y),
        min(len(lines_a), len(lines_b)) + 1,
    )
    line_a = lines_a[number - 1] if number <= len(lines_a) else None
    line_b = lines_b[number - 1] if number <= len(lines_b) else None
    shown_a, shown_b = _show_lines(number, line_a, line_b)
    return Difference(path=_BODY, kind=DiffKind.CHANGED, primary=shown_a, candidate=shown_b)


def _show_lines(number: int, a: str | None, b: str | None) -> tuple[str, str]:
    bare_a = None if a is None else a.rstrip("\r\n")
    bare_b = None if b is None else b.rstrip("\r\n")
    if bare_a == bare_b:
        # Only the line endings differ: show them.
        return f"line {number}: {a!r}", f"line {number}: {b!r}"
    column = _first_difference(bare_a or "", bare_b or "")
    return _window(number, bare_a, column), _window(number, bare_b, column)


def _first_difference(a: str, b: str) -> int:
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )


def _window(number: int, line: str | None, column: int) -> str:
    """The line, or for a long one the part from shortly before the first differing column."""
    if line is None:
        return ""
    if len(line) + 10 <= WIDTH or column < WIDTH // 2:
        return shorten(f"line {number}: {line}")
    start = column - 20
    return shorten(f"line {number}, col {column + 1}: …{line[start:]}")
