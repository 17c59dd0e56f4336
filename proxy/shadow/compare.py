"""The comparison engine: two answers and a route's rules in, their differences out.

One engine for the live shadow and the offline runs, pure and synchronous (a
caller with big bodies runs it in a thread). In order, it reports:

- `status` when the status codes differ;
- `headers.<name>` per lower-case name not in `rules.ignore_headers`, and
  Set-Cookie per cookie: `headers.set-cookie.<cookie>[.<attribute>]`;
- the body once Content-Encoding is undone (gzip, deflate zlib-wrapped or raw,
  br when a brotli that bounds its output is installed; any other coding is
  compared as raw bytes): JSON structurally at paths such as
  `$.items[3].starts_at`, other text by its first differing line, binary by
  length and hash, at `body`.

`rules.ignore_json` and `rules.unordered` are JSON path patterns
(`check_json_path`), compiled once per pair of tuples. An answer cut at
`max_body` or a body larger than `rules.max_decoded` once decoded is not
compared: `BodyTooLarge`, raised while decoding, before a bomb expands.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from proxy.errors import ProxyError
from proxy.shadow._bodies import Overflow
from proxy.shadow._bodydiff import Body, diff_bodies
from proxy.shadow._headers import diff_headers, group_headers
from proxy.shadow._jsonpath import PathMatcher, parse_json_path
from proxy.shadow.model import Difference, DiffKind

if TYPE_CHECKING:
    from proxy.shadow.model import Answer, CompareRules

__all__ = ["BodyTooLarge", "check_json_path", "compare"]


class BodyTooLarge(ProxyError):
    """An answer's body is too large to compare.

    Attributes:
        side: "primary" or "candidate".
        limit: the decoded size it passed (`max_decoded`), 0 when the answer was cut at `max_body`.
    """

    def __init__(self, side: str, limit: int) -> None:
        self.side = side
        self.limit = limit
        if limit:
            message = f"the {side}'s body is larger than max_decoded ({limit} bytes) once decoded"
        else:
            message = f"the {side}'s body was cut at max_body"
        super().__init__(f"{message}: not compared")


def check_json_path(text: str) -> None:
    """Raise ValueError, naming the pattern and its bad part, unless `text` is a JSON path pattern."""
    parse_json_path(text)


def compare(primary: Answer, candidate: Answer, rules: CompareRules) -> tuple[Difference, ...]:
    """Every difference between the two answers under `rules` (none: they match).

    Raises BodyTooLarge for a truncated answer or a body past `rules.max_decoded`
    decoded, and ValueError for a pattern `check_json_path` rejects.
    """
    for side, answer in (("primary", primary), ("candidate", candidate)):
        if answer.truncated:
            raise BodyTooLarge(side, 0)
    out: list[Difference] = []
    if primary.status != candidate.status:
        out.append(
            Difference(
                path="status",
                kind=DiffKind.CHANGED,
                primary=str(primary.status),
                candidate=str(candidate.status),
            )
        )
    headers_a, headers_b = group_headers(primary.headers), group_headers(candidate.headers)
    out += diff_headers(headers_a, headers_b, rules)
    try:
        out += diff_bodies(
            _body(primary, headers_a),
            _body(candidate, headers_b),
            limit=rules.max_decoded,
            paths=_matcher(rules.ignore_json, rules.unordered).root,
        )
    except Overflow as exc:
        raise BodyTooLarge(str(exc.args[0]), rules.max_decoded) from exc
    return tuple(out)


def _body(answer: Answer, headers: dict[str, list[str]]) -> Body:
    content_type = headers.get("content-type")
    coding = headers.get("content-encoding")
    return Body(
        data=answer.body,
        content_type=content_type[0] if content_type else None,
        content_encoding=",".join(coding) if coding else None,
    )


@functools.lru_cache(maxsize=256)
def _matcher(ignore_json: tuple[str, ...], unordered: tuple[str, ...]) -> PathMatcher:
    # The group order gives the bits _jsondiff reads: IGNORE = 1, UNORDERED = 2.
    return PathMatcher((ignore_json, unordered))
