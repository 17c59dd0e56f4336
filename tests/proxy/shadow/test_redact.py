"""Redaction of stored examples: masks, headers, JSON bodies, whole answers."""

from __future__ import annotations

import gzip
import hashlib
import json
import re

import pytest

from proxy.shadow.model import Answer, Difference, DiffKind
from proxy.shadow.redact import (
    mask,
    redact_answer,
    redact_differences,
    redact_headers,
    redact_json_body,
)

MASK = re.compile(r"redacted:[0-9a-f]{12}")


def m(value: str) -> str:
    """The expected mask, computed independently of the module."""
    return "redacted:" + hashlib.sha256(value.encode()).hexdigest()[:12]


def test_mask_is_short_stable_and_tells_values_apart() -> None:
    assert mask("token-1") == m("token-1")
    assert MASK.fullmatch(mask("token-1"))
    assert mask("token-1") == mask("token-1")
    assert mask("token-1") != mask("token-2")
    assert "token" not in mask("token-1")


def test_masking_twice_changes_nothing() -> None:
    assert mask(mask("token-1")) == mask("token-1")


HEADER_CASES = [
    # Authorization and Proxy-Authorization: the whole value, in any case
    ((("Authorization", "Bearer abc"),), frozenset(), (("Authorization", m("Bearer abc")),)),
    (
        (("proxy-authorization", "Basic eA=="),),
        frozenset(),
        (("proxy-authorization", m("Basic eA==")),),
    ),
    # Cookie: each cookie's name kept, its value masked
    (
        (("Cookie", "sid=abc; lang=en"),),
        frozenset(),
        (("Cookie", f"sid={m('abc')}; lang={m('en')}"),),
    ),
    # Set-Cookie: name and attributes kept, only the value masked
    (
        (("Set-Cookie", "sid=abc; Path=/; HttpOnly; SameSite=Lax"),),
        frozenset(),
        (("Set-Cookie", f"sid={m('abc')}; Path=/; HttpOnly; SameSite=Lax"),),
    ),
    # a cookie piece without `=` is all value
    ((("Cookie", "abc"),), frozenset(), (("Cookie", m("abc")),)),
    # a route's own names, matched in any case
    ((("X-Api-Key", "k1"),), frozenset({"x-api-key"}), (("X-Api-Key", m("k1")),)),
    ((("x-api-key", "k1"),), frozenset({"X-API-Key"}), (("x-api-key", m("k1")),)),
    # other headers untouched; order and repeats kept
    (
        (("Accept", "a"), ("Cookie", "a=1"), ("Accept", "b")),
        frozenset(),
        (("Accept", "a"), ("Cookie", f"a={m('1')}"), ("Accept", "b")),
    ),
]


@pytest.mark.parametrize(("headers", "names", "expected"), HEADER_CASES)
def test_redact_headers(
    headers: tuple[tuple[str, str], ...],
    names: frozenset[str],
    expected: tuple[tuple[str, str], ...],
) -> None:
    assert redact_headers(headers, names) == expected


USER = {"name": "Ann", "password": "hunter2", "cards": [{"pan": "4111", "exp": "12/29"}]}

BODY_CASES = [
    # a named field
    (USER, ("$.password",), {**USER, "password": m("hunter2")}),
    # at any depth, and under a wildcard
    (
        {"user": USER},
        ("$..password", "$.user.cards[*].pan"),
        {"user": {**USER, "password": m("hunter2"), "cards": [{"pan": m("4111"), "exp": "12/29"}]}},
    ),
    # a non-string value: the mask of its compact JSON, keys sorted
    ({"card": {"pan": "4111", "cvc": 123}}, ("$.card",), {"card": m('{"cvc":123,"pan":"4111"}')}),
    ({"pin": 1234}, ("$.pin",), {"pin": m("1234")}),
    # the root itself
    ({"a": 1}, ("$",), m('{"a":1}')),
]


@pytest.mark.parametrize(("document", "paths", "expected"), BODY_CASES)
def test_redact_json_body(document: object, paths: tuple[str, ...], expected: object) -> None:
    body = json.dumps(document).encode()
    assert json.loads(redact_json_body(body, "application/json", paths)) == expected


UNCHANGED_CASES = [
    # not JSON by its Content-Type
    (b'{"password": "x"}', "text/html", ("$.password",)),
    # JSON by type, but not parsable
    (b'{"password": ', "application/json", ("$.password",)),
    # nothing matches: the bytes are kept as they are, spacing included
    (b'{ "a" : 1 }', "application/json", ("$.password",)),
    # no patterns
    (b'{"password": "x"}', "application/json", ()),
]


@pytest.mark.parametrize(("body", "content_type", "paths"), UNCHANGED_CASES)
def test_bodies_left_as_they_are(body: bytes, content_type: str, paths: tuple[str, ...]) -> None:
    assert redact_json_body(body, content_type, paths) is body


def test_a_body_without_content_type_is_tried_as_json() -> None:
    assert json.loads(redact_json_body(b'{"t": "x"}', None, ("$.t",))) == {"t": m("x")}


def test_a_problem_json_body_is_json() -> None:
    redacted = redact_json_body(b'{"t": "x"}', "application/problem+json; charset=utf-8", ("$.t",))
    assert json.loads(redacted) == {"t": m("x")}


def test_large_integers_survive_redaction() -> None:
    body = b'{"id": 123456789012345678901234567890, "t": "x"}'
    assert redact_json_body(body, "application/json", ("$.t",)) == (
        f'{{"id":123456789012345678901234567890,"t":"{m("x")}"}}'.encode()
    )


def test_redact_answer_masks_headers_and_body() -> None:
    body = b'{"token": "abc", "n": 1}'
    answer = Answer(
        status=200,
        headers=(
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("Set-Cookie", "sid=s1; Path=/"),
            ("X-Trace", "t1"),
        ),
        body=body,
        latency=0.25,
    )
    redacted = redact_answer(answer, frozenset({"x-trace"}), ("$.token",))
    assert json.loads(redacted.body) == {"token": m("abc"), "n": 1}
    assert redacted.headers == (
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(redacted.body))),
        ("Set-Cookie", f"sid={m('s1')}; Path=/"),
        ("X-Trace", m("t1")),
    )
    assert (redacted.status, redacted.latency) == (200, 0.25)


def test_redact_answer_reads_a_gzip_body_and_keeps_it_decoded() -> None:
    body = gzip.compress(b'{"token": "abc"}')
    answer = Answer(
        status=200,
        headers=(("Content-Type", "application/json"), ("Content-Encoding", "gzip")),
        body=body,
    )
    redacted = redact_answer(answer, frozenset(), ("$.token",))
    assert json.loads(redacted.body) == {"token": m("abc")}
    assert redacted.headers == (("Content-Type", "application/json"),)


@pytest.mark.parametrize(
    "answer",
    [
        # no JSON paths: the body is not looked at
        Answer(status=200, headers=(("Content-Type", "application/json"),), body=b'{"token": "a"}'),
        # a coding that cannot be undone: kept as it is
        Answer(
            status=200,
            headers=(("Content-Type", "application/json"), ("Content-Encoding", "zstd")),
            body=b"\x28\xb5\x2f\xfd",
        ),
    ],
)
def test_redact_answer_keeps_bodies_it_cannot_or_need_not_read(answer: Answer) -> None:
    paths = () if answer.body.startswith(b"{") else ("$.token",)
    assert redact_answer(answer, frozenset(), paths).body is answer.body


PATHS = ("$.user.password", "$.cards[*].pan")

DIFFERENCE_CASES = [
    # at a redacted path
    ("$.user.password", PATHS, True),
    # below a redacted path (a match covers its subtree)
    ("$.cards[2].pan.last4", PATHS, True),
    # above one: the rendered value may hold the secret
    ("$.user", PATHS, True),
    ("$", PATHS, True),
    # an unordered array's element, at a redacted array
    ("$.cards[*]", PATHS, True),
    # beside a redacted path: shown as it is
    ("$.user.name", PATHS, False),
    ("$.cards[0].exp", PATHS, False),
    ("status", PATHS, False),
    # a body preview may show a JSON side, but only matters when JSON is redacted
    ("body", PATHS, True),
    ("body", (), False),
    # a redacted header, any case in the rules
    ("headers.x-api-key", (), True),
    ("headers.x-other", (), False),
]


@pytest.mark.parametrize(("path", "paths", "masked"), DIFFERENCE_CASES)
def test_redact_differences(path: str, paths: tuple[str, ...], masked: bool) -> None:
    difference = Difference(path=path, kind=DiffKind.CHANGED, primary="p1", candidate="c1")
    [redacted] = redact_differences([difference], frozenset({"X-Api-Key"}), paths)
    expected = (m("p1"), m("c1")) if masked else ("p1", "c1")
    assert (redacted.primary, redacted.candidate) == expected
    assert (redacted.path, redacted.kind, redacted.signature) == (
        difference.path,
        difference.kind,
        difference.signature,
    )


def test_redact_differences_keeps_a_missing_side_empty() -> None:
    difference = Difference(path="$.user.password", kind=DiffKind.MISSING, primary="x")
    [redacted] = redact_differences([difference], frozenset(), PATHS)
    assert (redacted.primary, redacted.candidate) == (m("x"), "")
