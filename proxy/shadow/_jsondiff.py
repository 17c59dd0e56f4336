"""Two JSON documents compared structurally.

Objects are compared by key (order never matters); arrays by position, or as
multisets at an `unordered` path; null, bool, number, string, array and object
are six types, and bool is not a number (Python's `True == 1` must not hide a
change) while int 1 and float 1.0 are the same number.

An array whose length changed gives one `length` difference and no element
differences: one dropped item would otherwise shift every later one into a
"changed". An unordered array of the same length whose contents differ gives
one `changed` at `<path>[*]`, with one element found only in the primary and
one found only in the candidate: a multiset has no positions to name, and one
pair is what a reader needs to see what kind of element changed.

Speed: equal subtrees are skipped with one C-level `==`. `==` is exact for
JSON except where a bool meets 0 or 1, so a container found equal is confirmed
by comparing its orjson serialisations (also C-level); only a disagreement
between the two, rare in practice, walks the subtree in Python.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any, Final

import orjson

from proxy.shadow._jsonpath import child_path
from proxy.shadow._render import render_json
from proxy.shadow.model import Difference, DiffKind

if TYPE_CHECKING:
    from collections.abc import Hashable

    from proxy.shadow._jsonpath import PathState

__all__ = ["IGNORE", "UNORDERED", "diff_json"]

# The pattern groups of the matcher the engine builds: (ignore_json, unordered).
IGNORE: Final = 1
UNORDERED: Final = 2

_ABSENT: Final = object()
_NUMBERS: Final = frozenset({int, float})
_CHANGED: Final = DiffKind.CHANGED
_JSON_DUMPS: Final = orjson.dumps


def diff_json(primary: object, candidate: object, root: PathState | None) -> list[Difference]:
    """The differences between two parsed documents; `root` is the matcher's state at `$`.

    May raise RecursionError for documents nested deeper than Python can walk.
    """
    out: list[Difference] = []
    if root is not None and root.hits & IGNORE:
        return out
    if not _same(primary, candidate):
        _node(primary, candidate, "$", root, out)
    return out


def _same(a: object, b: object) -> bool:
    """Equal as JSON, for certain; False may still turn out equal when walked."""
    if a is b:
        return True
    kind = type(a)
    return kind is type(b) and a == b and ((kind is not dict and kind is not list) or _exact(a, b))


def _exact(a: object, b: object) -> bool:
    """Two containers `==` found equal are equal as JSON too (no bool was taken for 0 or 1)."""
    try:
        return bool(_JSON_DUMPS(a) == _JSON_DUMPS(b))
    except orjson.JSONEncodeError:
        return False  # beyond orjson (huge integers, deep nesting): let the walk decide


def _node(a: Any, b: Any, path: str, state: PathState | None, out: list[Difference]) -> None:
    kind, other = type(a), type(b)
    if kind is dict and other is dict:
        _object(a, b, path, state, out)
    elif kind is list and other is list:
        if state is not None and state.hits & UNORDERED:
            _unordered(a, b, path, state, out)
        else:
            _array(a, b, path, state, out)
    elif kind is other or (kind in _NUMBERS and other in _NUMBERS):
        if a != b:
            out.append(
                Difference(
                    path=path, kind=_CHANGED, primary=render_json(a), candidate=render_json(b)
                )
            )
    else:
        out.append(
            Difference(
                path=path,
                kind=DiffKind.TYPE_CHANGED,
                primary=render_json(a),
                candidate=render_json(b),
            )
        )


def _ignored(state: PathState | None, key: str | int) -> bool:
    if state is None:
        return False
    child = state.child(key)
    return child is not None and bool(child.hits & IGNORE)


def _object(
    a: dict[str, Any], b: dict[str, Any], path: str, state: PathState | None, out: list[Difference]
) -> None:
    missing = 0
    for key, va in a.items():
        vb = b.get(key, _ABSENT)
        # _same, inlined: this loop runs for every key of every differing object.
        if va is vb:
            continue
        kind = type(va)
        if kind is type(vb):
            if va == vb and ((kind is not dict and kind is not list) or _exact(va, vb)):
                continue
        elif vb is _ABSENT:
            missing += 1
            if not _ignored(state, key):
                out.append(_side(path, key, DiffKind.MISSING, primary=va))
            continue
        child = None if state is None else state.child(key)
        if child is None or not child.hits & IGNORE:
            _node(va, vb, child_path(path, key), child, out)
    if len(b) > len(a) - missing:
        out.extend(
            _side(path, key, DiffKind.EXTRA, candidate=vb)
            for key, vb in b.items()
            if key not in a and not _ignored(state, key)
        )


def _side(
    path: str, key: str, kind: DiffKind, primary: object = _ABSENT, candidate: object = _ABSENT
) -> Difference:
    """A key found on one side only."""
    return Difference(
        path=child_path(path, key),
        kind=kind,
        primary="" if primary is _ABSENT else render_json(primary),
        candidate="" if candidate is _ABSENT else render_json(candidate),
    )


def _length(a: list[Any], b: list[Any], path: str, state: PathState | None) -> Difference | None:
    """The `length` difference of two arrays, unless their elements are all ignored."""
    if state is not None and (each := state.any_index()) is not None and each.hits & IGNORE:
        return None
    return Difference(path=path, kind=DiffKind.LENGTH, primary=str(len(a)), candidate=str(len(b)))


def _array(
    a: list[Any], b: list[Any], path: str, state: PathState | None, out: list[Difference]
) -> None:
    if len(a) != len(b):
        if (length := _length(a, b, path, state)) is not None:
            out.append(length)
        return
    for index, va in enumerate(a):
        vb = b[index]
        if va is vb:
            continue
        kind = type(va)
        if (
            kind is type(vb)
            and va == vb
            and ((kind is not dict and kind is not list) or _exact(va, vb))
        ):
            continue
        child = None if state is None else state.child(index)
        if child is None or not child.hits & IGNORE:
            _node(va, vb, child_path(path, index), child, out)


def _unordered(
    a: list[Any], b: list[Any], path: str, state: PathState, out: list[Difference]
) -> None:
    kept_a, keys_a = _multiset(a, state)
    kept_b, keys_b = _multiset(b, state)
    if len(kept_a) != len(kept_b):
        if (length := _length(a, b, path, state)) is not None:
            out.append(length)
        return
    count_a, count_b = Counter(keys_a), Counter(keys_b)
    if count_a == count_b:
        return
    only_a = next(v for v, k in zip(kept_a, keys_a, strict=True) if count_a[k] > count_b[k])
    only_b = next(v for v, k in zip(kept_b, keys_b, strict=True) if count_b[k] > count_a[k])
    out.append(
        Difference(
            path=f"{path}[*]",
            kind=_CHANGED,
            primary=render_json(only_a),
            candidate=render_json(only_b),
        )
    )


def _multiset(items: list[Any], state: PathState) -> tuple[list[Any], list[Hashable]]:
    """The elements not ignored, and a canonical key of each (ignored parts left out)."""
    if not state.live:
        # No pattern can match below: no state to carry.
        return items, [_canonical(item, None) for item in items]
    kept: list[Any] = []
    keys: list[Hashable] = []
    for index, item in enumerate(items):
        child = state.child(index)
        if child is not None and child.hits & IGNORE:
            continue
        kept.append(item)
        keys.append(_canonical(item, child))
    return kept, keys


def _canonical(value: Any, state: PathState | None) -> Hashable:
    """A hashable form equal for equal JSON: keys sorted, numbers tagged apart from bools."""
    kind = type(value)
    if kind is dict:
        return _canonical_object(value, state)
    if kind is list:
        return _canonical_array(value, state)
    if kind is float and value.is_integer():
        return ("n", int(value))  # 1.0 and 1 are one number
    if kind is int or kind is float:
        return ("n", value)
    scalar: Hashable = value  # str, bool, None: distinct from the tagged tuples
    return scalar


def _canonical_object(value: dict[str, Any], state: PathState | None) -> Hashable:
    pairs = []
    for key, item in value.items():
        child = None if state is None else state.child(key)
        if child is None or not child.hits & IGNORE:
            pairs.append((key, _canonical(item, child)))
    pairs.sort(key=_first)
    return ("{", tuple(pairs))


def _canonical_array(value: list[Any], state: PathState | None) -> Hashable:
    if state is None:
        return ("[", tuple(_canonical(item, None) for item in value))
    items = [_canonical(item, state.child(index)) for index, item in enumerate(value)]
    if state.hits & UNORDERED:
        # An unordered array inside an element: its keys in a fixed order.
        # They mix types, so they are ordered by their repr.
        return ("[*", tuple(sorted(items, key=repr)))
    return ("[", tuple(items))


def _first(pair: tuple[str, Hashable]) -> str:
    return pair[0]
