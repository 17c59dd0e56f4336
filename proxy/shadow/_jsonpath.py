"""JSON path patterns (`ignore_json`, `unordered`, redaction): parsing, matching, rendering.

A pattern is `$` then steps: `.name`, `['name']` or `["name"]`, `[N]`,
`[*]` or `.*` (any index or key), and `..` before a step (that step at any
depth below): `$.items[*].updated_at`, `$..etag`, `$..items[*].id`. The
language is the one `proxy.routing.jsonpath` accepts when it checks
routes.yaml, so a pattern that passed `club-proxy check` never fails here; the
one difference is that a quoted `['*']` is a key named `*`, not a wildcard.

Matching runs an NFA alongside the documents: a `PathState` is the set of
(pattern, step) positions still alive at a node, and `child(key)` moves it to
a child. States are interned and their moves cached per key, where a key no
pattern names counts as "another name" or "another index", so the cache is
bounded by the patterns, not by the documents, and a walk pays one dict
lookup per node it enters.
"""

from __future__ import annotations

import enum
import functools
import re
from dataclasses import dataclass
from typing import Final

__all__ = ["PathMatcher", "PathState", "Step", "StepKind", "child_path", "parse_json_path"]


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
_IDENTIFIER: Final = re.compile(_NAME)
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


@functools.lru_cache(maxsize=4096)
def _segment(key: str | int) -> str:
    if isinstance(key, int):
        return f"[{key}]"
    if _IDENTIFIER.fullmatch(key):
        return f".{key}"
    # The grammar has no escapes: quote with the mark the key does not contain.
    return f'["{key}"]' if "'" in key and '"' not in key else f"['{key}']"


def child_path(parent: str, key: str | int) -> str:
    """`$.items` + 3 -> `$.items[3]`; `$` + "odd key" -> `$['odd key']`."""
    return parent + _segment(key)


# A key no pattern names moves a state like any other such key: one cache entry each.
_OTHER_NAME: Final = object()
_OTHER_INDEX: Final = object()


class PathState:
    """The patterns still alive at one node of a document.

    `hits` has bit `1 << group` set when a pattern of that group matches this
    node exactly; `live` has it set when one may still match below it.
    """

    __slots__ = ("_matcher", "_moves", "hits", "live", "positions")

    def __init__(self, matcher: PathMatcher, positions: frozenset[tuple[int, int]]) -> None:
        self._matcher = matcher
        self._moves: dict[object, PathState | None] = {}
        self.positions = positions
        self.hits = 0
        self.live = 0
        for pattern, at in positions:
            bit = matcher.bits[pattern]
            if at == len(matcher.patterns[pattern]):
                self.hits |= bit
            else:
                self.live |= bit

    def child(self, key: str | int) -> PathState | None:
        """The state at this node's child `key`; None when no pattern can match there or below."""
        token: object = key
        if key not in self._matcher.keys:
            token = _OTHER_INDEX if type(key) is int else _OTHER_NAME
        try:
            return self._moves[token]
        except KeyError:
            moved = self._moves[token] = self._matcher.move(self.positions, token)
            return moved

    def any_index(self) -> PathState | None:
        """The state at an array element no pattern names by its index."""
        try:
            return self._moves[_OTHER_INDEX]
        except KeyError:
            moved = self._moves[_OTHER_INDEX] = self._matcher.move(self.positions, _OTHER_INDEX)
            return moved


class PathMatcher:
    """Pattern groups compiled into one NFA; `root` is the state at `$` (None: nothing to match)."""

    __slots__ = ("_states", "bits", "keys", "patterns", "root")

    def __init__(self, groups: tuple[tuple[str, ...], ...]) -> None:
        self.patterns: list[tuple[Step, ...]] = []
        self.bits: list[int] = []
        for group, texts in enumerate(groups):
            for text in texts:
                self.patterns.append(parse_json_path(text))
                self.bits.append(1 << group)
        self.keys: frozenset[str | int] = frozenset(
            step.key
            for steps in self.patterns
            for step in steps
            if step.key is not None and step.kind is not StepKind.ANY
        )
        self._states: dict[frozenset[tuple[int, int]], PathState] = {}
        self.root = self._state(frozenset((p, 0) for p in range(len(self.patterns))))

    def _state(self, positions: frozenset[tuple[int, int]]) -> PathState | None:
        if not positions:
            return None
        state = self._states.get(positions)
        if state is None:
            state = self._states[positions] = PathState(self, positions)
        return state

    def move(self, positions: frozenset[tuple[int, int]], key: object) -> PathState | None:
        """The state at child `key` (a name, an index or a stand-in) of a node at `positions`."""
        moved: set[tuple[int, int]] = set()
        for pattern, at in positions:
            steps = self.patterns[pattern]
            if at == len(steps):
                continue  # matched at the parent: nothing below is a further match
            step = steps[at]
            if step.kind is StepKind.DESCEND:
                moved.add((pattern, at))  # `..` may skip this level too
                if _matches(steps[at + 1], key):
                    moved.add((pattern, at + 2))
            elif _matches(step, key):
                moved.add((pattern, at + 1))
        return self._state(frozenset(moved))


def _matches(step: Step, key: object) -> bool:
    # Names are str and indices int, so `['3']` never matches position 3; the
    # stand-ins for unnamed keys equal no step's key.
    return step.kind is StepKind.ANY or key == step.key
