"""JSON path patterns (`ignore_json`, `unordered`, redaction): matching and rendering.

The patterns are parsed by `proxy.routing.jsonpath` (the same parser checks
routes.yaml, so a pattern that passed `club-proxy check` never fails here).

Matching runs an NFA alongside the documents: a `PathState` is the set of
(pattern, step) positions still alive at a node, and `child(key)` moves it to
a child. States are interned and their moves cached per key, where a key no
pattern names counts as "another name" or "another index", so the cache is
bounded by the patterns, not by the documents, and a walk pays one dict
lookup per node it enters.
"""

from __future__ import annotations

import functools
from typing import Final

from proxy.routing.jsonpath import IDENTIFIER, Step, StepKind, parse_json_path

__all__ = ["PathMatcher", "PathState", "Step", "StepKind", "child_path", "parse_json_path"]


@functools.lru_cache(maxsize=4096)
def _segment(key: str | int) -> str:
    if isinstance(key, int):
        return f"[{key}]"
    if IDENTIFIER.fullmatch(key):
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
