"""The values every part of shadow shares: answers, rules, differences, outcomes.

One comparison engine (`proxy.shadow.compare`) turns two `Answer`s and a
route's `CompareRules` into `Difference`s; the results (`proxy.shadow.results`)
count them per route, group them by `Difference.signature` and decide the
verdict; the live shadow and the offline comparison runs both speak these
values, so `/-/shadow`, the dashboard and a run's report mean the same thing.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "DEFAULT_IGNORED_HEADERS",
    "Answer",
    "CompareRules",
    "DiffKind",
    "Difference",
    "Example",
    "Outcome",
    "SkipReason",
    "collapse_indices",
]

# Headers that differ between any two answers and say nothing about the
# handler: framing, hop-by-hop, the gateway's and the clock's own.
DEFAULT_IGNORED_HEADERS: Final = frozenset(
    {
        "date",
        "server",
        "via",
        "x-request-id",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "age",
    }
)

_INDEX: Final = re.compile(r"\[\d+\]")


def collapse_indices(path: str) -> str:
    """`$.items[3].starts_at` -> `$.items[*].starts_at`: one signature per logical field."""
    return _INDEX.sub("[*]", path)


class DiffKind(enum.Enum):
    CHANGED = "changed"  # same type, another value
    TYPE_CHANGED = "type_changed"  # e.g. a number became a string
    MISSING = "missing"  # in the primary, not in the candidate
    EXTRA = "extra"  # in the candidate, not in the primary
    LENGTH = "length"  # an array (or a binary body) of another length


class Outcome(enum.Enum):
    """What became of one request of a shadowed route."""

    MATCH = "match"
    MISMATCH = "mismatch"
    NOISE = "noise"  # differed only where the primary differs from itself
    SKIPPED = "skipped"  # not compared; see SkipReason
    ERROR = "error"  # not compared because a side failed; see SkipReason


class SkipReason(enum.Enum):
    """Why a request of a shadowed route was not compared (skipped or error)."""

    SAMPLED_OUT = "sampled_out"
    UNSAFE_METHOD = "unsafe_method"
    UPGRADE = "upgrade"
    # A canary sent this request to the shadow's own target: no other side to ask.
    SAME_TARGET = "same_target"
    QUEUE_FULL = "queue_full"
    BODY_TOO_LARGE = "body_too_large"
    # The process's cap on copies per second (`--shadow-rate`) was reached.
    RATE_LIMITED = "rate_limited"
    TIMEOUT = "timeout"
    CANDIDATE_ERROR = "candidate_error"
    # The candidate failed several copies in a row: its copies pause for a while.
    CANDIDATE_DOWN = "candidate_down"
    PRIMARY_ERROR = "primary_error"

    @property
    def outcome(self) -> Outcome:
        """`error` when a side failed, `skipped` when the proxy chose not to compare."""
        return Outcome.ERROR if self in _ERRORS else Outcome.SKIPPED


_ERRORS: Final = frozenset(
    {SkipReason.TIMEOUT, SkipReason.CANDIDATE_ERROR, SkipReason.CANDIDATE_DOWN}
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Answer:
    """One side's answer to one request, as the comparison sees it.

    `headers` keep their order and repeats (several `Set-Cookie`); `body` is
    the body as received (still content-encoded), at most the route's
    `max_body` bytes: `truncated` says more was sent, and such an answer is
    not compared.
    """

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    truncated: bool = False
    latency: float = 0.0  # seconds, request start to the end of the answer


@dataclass(frozen=True, slots=True, kw_only=True)
class CompareRules:
    """How one route's answers are compared (from its `shadow:` in routes.yaml).

    `ignore_headers` are lower-case names, the defaults included. `ignore_json`
    and `unordered` are JSON path patterns: `$`, `.name`, `['name']`,
    `[3]`, `[*]` (any index or key) and `..` (any depth), e.g.
    `$.items[*].updated_at`, `$..etag`. `max_decoded` bounds a body after
    `Content-Encoding` is undone (a bigger one, a bomb, is not compared).
    """

    ignore_headers: frozenset[str] = DEFAULT_IGNORED_HEADERS
    ignore_json: tuple[str, ...] = ()
    unordered: tuple[str, ...] = ()
    # Set-Cookie values (session ids) differ on every answer: compared by
    # cookie name and attributes unless this is set.
    compare_cookie_values: bool = False
    max_decoded: int = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class Difference:
    """One difference between two answers.

    `path` is where: `status`, `headers.<lower-case name>`,
    `headers.set-cookie.<cookie name>[.<attribute>]`, a JSON path such as
    `$.items[3].starts_at` for a JSON body, `body` for any other body (text:
    the first differing line in the values; binary: length and hash).
    `primary` and `candidate` are short renderings of both values (JSON
    text, truncated), "" where a side has none.
    """

    path: str
    kind: DiffKind
    primary: str = ""
    candidate: str = ""
    signature: str = field(init=False)

    def __post_init__(self) -> None:
        # `changed:$.items[*].starts_at`: the key the results count by.
        object.__setattr__(self, "signature", f"{self.kind.value}:{collapse_indices(self.path)}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Example:
    """One compared request kept as an example of its differences, already redacted.

    `target` is the raw request target (path and query); `request_headers`
    are the headers the candidate was sent. `at` is Unix time.
    """

    at: float
    method: str
    target: str
    request_headers: tuple[tuple[str, str], ...]
    primary: Answer
    candidate: Answer
    secondary: Answer | None
    differences: tuple[Difference, ...]
