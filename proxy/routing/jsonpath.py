"""JSON path patterns of routes.yaml (`ignore.json`, `unordered`, `redact.json`).

A pattern is `$` then steps: `.name`, `['name']` or `["name"]`, `[N]`,
`[*]` or `.*` (any index or key), and `..` before a step (that step at any
depth below): `$.items[*].updated_at`, `$..etag`, `$..items[*].id`. A quoted
`['*']` is a key named `*`, not a wildcard. Parsed here, so `club-proxy
check` reports a bad pattern with its line; the comparison engine
(`proxy.shadow._jsonpath`) matches the same steps.
"""

from __future__ import annotations

import enum
import functools
import re
from dataclasses import dataclass
from typing import Final

__all__ = ["IDENTIFIER", "Step", "StepKind", "parse_json_path"]


class StepKind(enum.Enum):
    """What one step of a pattern matches."""

    NAME = "name"  # an object key
    INDEX = "index"  # an array position
    ANY = "any"  # any key or position: `[*]`, `.*`
    DESCEND = "descend"  # `..`: the next step at any depth below


@dataclass(frozen=True, slots=True)
class Step:
    """One step of a pattern: its kind, and the name (str) or index (int) it names."""

    kind: StepKind
    key: str | int | None = None


_NAME: Final = r"[A-Za-z_][A-Za-z0-9_-]*"
_STEP: Final = re.compile(
    rf"""(?P<deep>\.\.)(?=[A-Za-z_*\[])   # `..`, always followed by a step
    |\.(?P<name>{_NAME})                  # .name
    |\.(?P<star>\*)                       # .*
    |\[(?P<index>\d+)\]                   # [3]
    |\[(?P<any>\*)\]                      # [*]
    |\[(?P<q>['"])(?P<quoted>(?:(?!(?P=q)).)*)(?P=q)\]  # ['name'], ["name"]
    """,
    re.VERBOSE,
)
_DEEP_NAME: Final = re.compile(rf"(?P<name>{_NAME})|(?P<star>\*)")
# A key written `.key` in a path; any other is quoted.
IDENTIFIER: Final = re.compile(_NAME)
_DESCEND: Final = Step(StepKind.DESCEND)
_ANY: Final = Step(StepKind.ANY)


@functools.lru_cache(maxsize=1024)
def parse_json_path(text: str) -> tuple[Step, ...]:
    """The steps of pattern `text`; ValueError naming the pattern and the bad part."""
    if not text.startswith("$"):
        msg = f"JSON path {text!r} must start with '$'"
        raise ValueError(msg)
    steps: list[Step] = []
    position = 1
    while position < len(text):
        found = _STEP.match(text, position)
        if found is None:
            msg = (
                f"JSON path {text!r}: cannot read {text[position:]!r} "
                "(steps: .name, ['name'], [N], [*], .*, ..name)"
            )
            raise ValueError(msg)
        position = found.end()
        if found["deep"] is not None:
            steps.append(_DESCEND)
            # `$..name` and `$..*`: the step after `..` has no dot of its own.
            if (bare := _DEEP_NAME.match(text, position)) is not None:
                steps.append(_ANY if bare["star"] else Step(StepKind.NAME, bare["name"]))
                position = bare.end()
        else:
            steps.append(_step(found))
    return tuple(steps)


def _step(found: re.Match[str]) -> Step:
    if found["name"] is not None:
        return Step(StepKind.NAME, found["name"])
    if found["index"] is not None:
        return Step(StepKind.INDEX, int(found["index"]))
    if found["quoted"] is not None:
        return Step(StepKind.NAME, found["quoted"])
    return _ANY
