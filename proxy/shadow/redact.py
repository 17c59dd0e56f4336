"""Secrets masked before an example is stored: headers, JSON body values, whole answers.

A mask is `redacted:` and the first 12 hex digits of the value's SHA-256:
equal values keep equal masks and different values different ones, so a
reader can still tell "the candidate set another session id" without the id
being stored. The hash is not salted: a value drawn from a small set (a PIN,
a status) can be recovered by hashing each candidate, so masks suit secrets
(tokens, session ids), not short values one merely wants hidden.

Authorization, Proxy-Authorization, Cookie and Set-Cookie are always masked.
Cookie keeps each cookie's name and Set-Cookie keeps the name and the
attributes: which cookie changed, and how it is scoped, is what a reader
needs and is not secret.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
from typing import TYPE_CHECKING, Any, Final

import orjson

from proxy.shadow._bodies import (
    NOT_JSON,
    Overflow,
    decode_body,
    is_json_type,
    media_type,
    parse_json,
)
from proxy.shadow._jsonpath import PathMatcher, parse_json_path

if TYPE_CHECKING:
    from collections.abc import Iterable

    from proxy.shadow._jsonpath import PathState
    from proxy.shadow.model import Answer, Difference

__all__ = [
    "ALWAYS_MASKED",
    "mask",
    "mask_header",
    "redact_answer",
    "redact_differences",
    "redact_headers",
    "redact_json_body",
]

ALWAYS_MASKED: Final = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})

_MASK: Final = re.compile(r"redacted:[0-9a-f]{12}")
# An encoded body is decoded up to this size to be redacted (CompareRules' default).
_DECODE_LIMIT: Final = 8 * 1024 * 1024


def mask(value: str) -> str:
    """`redacted:` + 12 hex digits of the SHA-256 of `value`; a mask is left as it is."""
    if _MASK.fullmatch(value):
        return value  # redacting twice must not hash the mask
    digest = hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()
    return f"redacted:{digest[:12]}"


def mask_header(name: str, value: str) -> str:
    """`value` of header `name` (lower-case) masked: cookie names and attributes kept."""
    if name == "cookie":
        return ";".join(_mask_pair(piece) for piece in value.split(";"))
    if name == "set-cookie":
        pair, sep, attributes = value.partition(";")
        return _mask_pair(pair) + sep + attributes
    return mask(value)


def _mask_pair(piece: str) -> str:
    """`name=value` with the value masked; a piece without `=` is all value."""
    name, equals, value = piece.partition("=")
    if equals:
        return f"{name}={mask(value.strip())}"
    indent = piece[: len(piece) - len(piece.lstrip())]
    return indent + mask(piece.strip())


def redact_headers(
    headers: tuple[tuple[str, str], ...], names: frozenset[str]
) -> tuple[tuple[str, str], ...]:
    """`headers` with the values of `names` (any case) and of ALWAYS_MASKED masked."""
    masked = ALWAYS_MASKED | {name.lower() for name in names}
    return tuple(
        (name, mask_header(lower, value)) if (lower := name.lower()) in masked else (name, value)
        for name, value in headers
    )


def redact_json_body(body: bytes, content_type: str | None, paths: tuple[str, ...]) -> bytes:
    """`body` with the values at the JSON path patterns `paths` masked.

    A body whose Content-Type is not JSON (a missing one is tried), that does
    not parse, or where no pattern matches is returned as it is; otherwise it
    is written again as compact JSON. A masked string becomes its mask; any
    other value, the mask of its compact JSON with sorted keys.
    """
    redacted = _redacted_json(body, content_type, paths)
    return body if redacted is None else redacted


def _redacted_json(body: bytes, content_type: str | None, paths: tuple[str, ...]) -> bytes | None:
    if not paths or (content_type is not None and not is_json_type(media_type(content_type))):
        return None
    document = parse_json(body)
    if document is NOT_JSON:
        return None
    try:
        masked, changed = _mask_tree(document, _matcher(paths).root)
    except RecursionError:
        return None  # nested deeper than Python walks: like a body that does not parse
    if not changed:
        return None
    return _dumps(masked)


@functools.lru_cache(maxsize=256)
def _matcher(paths: tuple[str, ...]) -> PathMatcher:
    return PathMatcher((paths,))


def _mask_tree(value: Any, state: PathState | None) -> tuple[Any, bool]:
    """`value` with every node its patterns match masked, and whether any was."""
    if state is None:
        return value, False
    if state.hits:
        return (
            mask(value) if type(value) is str else mask(_dumps(value, sort=True).decode())
        ), True
    if type(value) is dict:
        pairs = [(key, _mask_tree(item, state.child(key))) for key, item in value.items()]
        return {key: item for key, (item, _) in pairs}, any(changed for _, (_, changed) in pairs)
    if type(value) is list:
        items = [_mask_tree(item, state.child(index)) for index, item in enumerate(value)]
        return [item for item, _ in items], any(changed for _, changed in items)
    return value, False


def _dumps(value: Any, *, sort: bool = False) -> bytes:
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS if sort else 0)
    except orjson.JSONEncodeError:
        # Integers beyond 64 bits, read by json: written back by json.
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=sort)
        return text.encode()


def redact_answer(answer: Answer, headers: frozenset[str], json_paths: tuple[str, ...]) -> Answer:
    """`answer` with its headers (`headers` and ALWAYS_MASKED) and JSON body (`json_paths`) masked.

    A content-encoded JSON body is decoded to be redacted, and then kept
    decoded: its Content-Encoding header is dropped and Content-Length set to
    the new length. A body that cannot be decoded (unknown coding, corrupt,
    larger than 8 MiB decoded) or parsed is kept as it is.
    """
    masked_headers = redact_headers(answer.headers, headers)
    if not json_paths:
        return dataclasses.replace(answer, headers=masked_headers)
    content_type = next((v for n, v in answer.headers if n.lower() == "content-type"), None)
    codings = [v for n, v in answer.headers if n.lower() == "content-encoding"]
    encoding = ",".join(codings) if codings else None
    try:
        decoded = decode_body(answer.body, encoding, max(_DECODE_LIMIT, len(answer.body)))
    except Overflow:
        decoded = None
    redacted = None if decoded is None else _redacted_json(decoded, content_type, json_paths)
    if redacted is None:
        return dataclasses.replace(answer, headers=masked_headers)
    framed = tuple(
        (name, str(len(redacted))) if name.lower() == "content-length" else (name, value)
        for name, value in masked_headers
        if name.lower() != "content-encoding"
    )
    return dataclasses.replace(answer, headers=framed, body=redacted)


def redact_differences(
    differences: Iterable[Difference], headers: frozenset[str], json_paths: tuple[str, ...]
) -> tuple[Difference, ...]:
    """`differences` with the values masked where they may show a redacted value.

    The engine does not know the redaction rules, so a secret that differs
    between the sides is rendered in the difference. Masked here: a header in
    `headers`; a JSON path at or below a `json_paths` match, and one above
    where a pattern could still match inside the rendered value; with
    `json_paths`, the `body` previews (a JSON side may be shown there).
    """
    names = {name.lower() for name in headers}
    return tuple(
        dataclasses.replace(d, primary=_mask_shown(d.primary), candidate=_mask_shown(d.candidate))
        if _shows_secret(d.path, names, json_paths)
        else d
        for d in differences
    )


def _mask_shown(value: str) -> str:
    return value and mask(value)


def _shows_secret(path: str, names: set[str], json_paths: tuple[str, ...]) -> bool:
    if path.startswith("headers."):
        return path.removeprefix("headers.") in names
    if path == "body":
        return bool(json_paths)
    if not json_paths or not path.startswith("$"):
        return False  # `status`, or no JSON redacted
    try:
        steps = parse_json_path(path)
    except ValueError:
        return True  # not a path the engine renders (a key with both quotes): mask to be safe
    state = _matcher(json_paths).root
    for step in steps:
        if state is None or state.hits:
            break
        # `[*]` is the engine's "an element" of an unordered array.
        state = state.any_index() if step.key is None else state.child(step.key)
    # Matched at or above the path, or a pattern may still match inside the value.
    return state is not None
