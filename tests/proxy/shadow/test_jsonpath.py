"""JSON path patterns: the grammar, its agreement with routes.yaml's check, matching, rendering."""

from __future__ import annotations

import pytest

from proxy.shadow._jsonpath import (
    PathMatcher,
    PathState,
    Step,
    StepKind,
    child_path,
    parse_json_path,
)
from proxy.shadow.compare import check_json_path

N, IX, ANY, DEEP = StepKind.NAME, StepKind.INDEX, StepKind.ANY, StepKind.DESCEND

VALID = [
    # the root alone
    ("$", ()),
    # dotted names, with the characters routes.yaml allows
    ("$.items", (Step(N, "items"),)),
    ("$.starts-at._x1", (Step(N, "starts-at"), Step(N, "_x1"))),
    # quoted names: single, double, with spaces, quotes of the other kind, empty
    ("$['odd key']", (Step(N, "odd key"),)),
    ('$["it\'s"]', (Step(N, "it's"),)),
    ("$['']", (Step(N, ""),)),
    # a quoted * or digit is a name, not a wildcard or an index
    ("$['*']", (Step(N, "*"),)),
    ("$['3']", (Step(N, "3"),)),
    # indices, leading zeros included
    ("$.items[3]", (Step(N, "items"), Step(IX, 3))),
    ("$[007]", (Step(IX, 7),)),
    # wildcards
    ("$.items[*].id", (Step(N, "items"), Step(ANY), Step(N, "id"))),
    ("$.a.*", (Step(N, "a"), Step(ANY))),
    # recursive descent before a name, a star, a bracket
    ("$..etag", (Step(DEEP), Step(N, "etag"))),
    ("$..*", (Step(DEEP), Step(ANY))),
    ("$..[0]", (Step(DEEP), Step(IX, 0))),
    ("$..['odd key']", (Step(DEEP), Step(N, "odd key"))),
    ("$..items[*].id", (Step(DEEP), Step(N, "items"), Step(ANY), Step(N, "id"))),
]

INVALID = [
    # no root
    ("items", "must start with '$'"),
    ("", "must start with '$'"),
    # a dot with nothing after it, a trailing descent, three dots
    ("$.", "cannot read '.'"),
    ("$.a..", "cannot read '..'"),
    ("$...a", "cannot read '...a'"),
    # a name must not start with a digit after a dot
    ("$.3", "cannot read '.3'"),
    # negative index, unclosed bracket, unquoted name in brackets
    ("$[-1]", "cannot read '[-1]'"),
    ("$['a'", "cannot read"),
    ("$[a]", "cannot read '[a]'"),
    # a space
    ("$.a b", "cannot read ' b'"),
]


@pytest.mark.parametrize(("text", "steps"), VALID)
def test_valid_patterns_parse(text: str, steps: tuple[Step, ...]) -> None:
    assert parse_json_path(text) == steps
    check_json_path(text)


@pytest.mark.parametrize(("text", "message"), INVALID)
def test_invalid_patterns_are_rejected_with_the_pattern_named(text: str, message: str) -> None:
    with pytest.raises(ValueError, match="JSON path") as caught:
        check_json_path(text)
    assert repr(text) in str(caught.value)
    assert message in str(caught.value)


def matches(pattern: str, *keys: str | int) -> bool:
    state: PathState | None = PathMatcher(((pattern,),)).root
    for key in keys:
        if state is None:
            return False
        state = state.child(key)
    return state is not None and bool(state.hits)


MATCHING = [
    # the root pattern matches the root only
    ("$", (), True),
    ("$", ("a",), False),
    # a name, and nothing below or beside it
    ("$.a", ("a",), True),
    ("$.a", ("a", "b"), False),
    ("$.a", ("b",), False),
    # [*] and .* take an index or a key
    ("$.items[*].id", ("items", 3, "id"), True),
    ("$.items[*].id", ("items", "x", "id"), True),
    ("$.items[*].id", ("items", "id"), False),
    ("$.a.*", ("a", 0), True),
    # an index is not a name of the same digits, and the reverse
    ("$[0]", (0,), True),
    ("$[0]", ("0",), False),
    ("$['0']", ("0",), True),
    ("$['0']", (0,), False),
    # .. at every depth, the first level included
    ("$..etag", ("etag",), True),
    ("$..etag", ("a", 0, "b", "etag"), True),
    ("$..etag", ("etags",), False),
    ("$..etag", ("etag", "x"), False),
    ("$..items[*].id", ("data", "items", 0, "id"), True),
    ("$..items[*].id", ("data", "items", 0, "x", "id"), False),
    # descent then a descent-reached key again deeper
    ("$..a.b", ("a", "a", "b"), True),
    # a quoted star is a key named *
    ("$['*']", ("*",), True),
    ("$['*']", ("x",), False),
]


@pytest.mark.parametrize(("pattern", "keys", "expected"), MATCHING)
def test_matching(pattern: str, keys: tuple[str | int, ...], expected: bool) -> None:
    assert matches(pattern, *keys) is expected


def test_groups_report_their_own_bits() -> None:
    matcher = PathMatcher((("$.a",), ("$.a", "$.b")))
    assert matcher.root is not None
    a, b = matcher.root.child("a"), matcher.root.child("b")
    assert a is not None
    assert a.hits == 0b11
    assert b is not None
    assert b.hits == 0b10
    assert matcher.root.child("c") is None


def test_no_pattern_means_no_state() -> None:
    assert PathMatcher(((), ())).root is None


def test_moves_are_cached_per_pattern_key_not_per_document_key() -> None:
    root = PathMatcher((("$.items[*].id", "$..etag"),)).root
    assert root is not None
    for i in range(1000):
        root.child(f"key{i}")
        root.child(i)
    # "another name", "another index", and none of the 2,000 document keys.
    assert len(root._moves) == 2


RENDERED = [
    # identifiers after a dot, indices in brackets
    (("items", 3, "starts_at"), "$.items[3].starts_at"),
    # a dash is allowed in a dotted name, as in the grammar
    (("starts-at",), "$.starts-at"),
    # anything else quoted, with the quote the key does not contain
    (("odd key",), "$['odd key']"),
    (("it's",), '$["it\'s"]'),
    (("3",), "$['3']"),
    (("",), "$['']"),
    (("*",), "$['*']"),
]


@pytest.mark.parametrize(("keys", "path"), RENDERED)
def test_rendered_paths_parse_back_to_their_keys(keys: tuple[str | int, ...], path: str) -> None:
    rendered = "$"
    for key in keys:
        rendered = child_path(rendered, key)
    assert rendered == path
    assert tuple(step.key for step in parse_json_path(rendered)) == keys
