"""JSON path patterns of routes.yaml (`ignore.json`, `unordered`, `redact.json`).

A pattern is `$` followed by steps: `.name`, `['name']` (or double quotes),
`[N]`, `[*]` or `.*` (any index or key), and `..` (any depth, then a step):
`$.items[*].updated_at`, `$..etag`. Parsed here so `club-proxy check` reports
a bad one with its line; the comparison engine matches them.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["ANY", "DESCEND", "parse_json_path"]

# The two wildcard steps; every other step is a key (str) or an index (int).
ANY: Final = "*"
DESCEND: Final = ".."

_STEP: Final = re.compile(
    r"""\.\.(?P<deep>[A-Za-z_][A-Za-z0-9_-]*|\*)?(?=[A-Za-z_*\[]|$)  # ..name, ..*, or .. before [
    |\.(?P<name>[A-Za-z_][A-Za-z0-9_-]*|\*)   # .name or .*
    |\[(?P<index>\d+|\*)\]                     # [3] or [*]
    |\[(?P<q>['"])(?P<quoted>(?:(?!(?P=q)).)*)(?P=q)\]  # ['name']
    """,
    re.VERBOSE,
)


def parse_json_path(text: str) -> tuple[str | int, ...]:
    """The steps of `text` (names, indices, ANY, DESCEND); ValueError when it is not a pattern."""
    if not text.startswith("$"):
        msg = f"JSON path {text!r} must start with '$'"
        raise ValueError(msg)
    steps: list[str | int] = []
    position = 1
    while position < len(text):
        found = _STEP.match(text, position)
        if found is None:
            msg = f"JSON path {text!r}: cannot read {text[position:]!r} (steps: .name, ['name'], [N], [*], ..)"
            raise ValueError(msg)
        if found.group().startswith(".."):
            steps.append(DESCEND)
            if found["deep"] is not None:
                steps.append(found["deep"])
        else:
            steps.append(_step(found))
        position = found.end()
    if steps and steps[-1] == DESCEND:
        msg = f"JSON path {text!r} must not end with '..'"
        raise ValueError(msg)
    return tuple(steps)


def _step(found: re.Match[str]) -> str | int:
    if found["name"] is not None:
        return found["name"]
    if found["index"] is not None:
        return ANY if found["index"] == ANY else int(found["index"])
    return found["quoted"]
