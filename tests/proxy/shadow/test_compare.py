"""The comparison engine: status, headers, cookies, bodies (JSON, text, binary), codings, limits."""

from __future__ import annotations

import gzip
import importlib.util
import json
import tracemalloc
import zlib
from typing import Any

import pytest

from proxy.errors import ProxyError
from proxy.shadow._render import shorten
from proxy.shadow.compare import BodyTooLarge, compare
from proxy.shadow.model import Answer, CompareRules, DiffKind
from proxy.shadow.redact import mask

JSON = (("Content-Type", "application/json"),)
TEXT = (("Content-Type", "text/plain; charset=utf-8"),)
BINARY = (("Content-Type", "application/octet-stream"),)
RULES = CompareRules()
HAS_BROTLI = importlib.util.find_spec("brotli") is not None

Row = tuple[str, str, str, str]  # path, kind, primary, candidate


def answer(
    body: bytes | Any = b"", headers: tuple[tuple[str, str], ...] = (), status: int = 200
) -> Answer:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Answer(status=status, headers=headers, body=data)


def js(value: Any, *extra: tuple[str, str]) -> Answer:
    return answer(json.dumps(value).encode(), (*JSON, *extra))


def rows(primary: Answer, candidate: Answer, rules: CompareRules = RULES) -> list[Row]:
    return [
        (d.path, d.kind.value, d.primary, d.candidate) for d in compare(primary, candidate, rules)
    ]


def readable(found: list[Row]) -> list[Row]:
    """Rows with hashes cut after `sha256:`: tables keep the readable part."""
    return [(p, k, _unhash(a), _unhash(b)) for p, k, a, b in found]


def _unhash(value: str) -> str:
    head, mark, _ = value.partition("sha256:")
    return head + mark if mark else value


def deflated(data: bytes, wbits: int) -> bytes:
    packer = zlib.compressobj(wbits=wbits)
    return packer.compress(data) + packer.flush()


# --- status and headers ----------------------------------------------------

HEADER_CASES: list[tuple[Answer, Answer, CompareRules, list[Row]]] = [
    # identical answers: nothing
    (answer(b"x", TEXT), answer(b"x", TEXT), RULES, []),
    # another status
    (answer(status=200), answer(status=500), RULES, [("status", "changed", "200", "500")]),
    # header names are case-insensitive
    (answer(headers=(("X-Club", "7"),)), answer(headers=(("x-club", "7"),)), RULES, []),
    # the default ignore list: the clock's and the gateway's headers
    (
        answer(headers=(("Date", "a"), ("Server", "legacy"), ("X-Request-Id", "1"))),
        answer(headers=(("Date", "b"), ("Server", "new"), ("X-Request-Id", "2"))),
        RULES,
        [],
    ),
    # a route's own ignored header
    (
        answer(headers=(("ETag", '"1"'),)),
        answer(headers=(("ETag", '"2"'),)),
        CompareRules(ignore_headers=frozenset({"etag"})),
        [],
    ),
    # missing, extra and changed values
    (
        answer(headers=(("X-A", "1"), ("X-B", "1"))),
        answer(headers=(("X-B", "2"), ("X-C", "3"))),
        RULES,
        [
            ("headers.x-a", "missing", "1", ""),
            ("headers.x-b", "changed", "1", "2"),
            ("headers.x-c", "extra", "", "3"),
        ],
    ),
    # repeated headers compare as a sequence: order counts
    (
        answer(headers=(("Vary", "a"), ("Vary", "b"))),
        answer(headers=(("Vary", "b"), ("Vary", "a"))),
        RULES,
        [("headers.vary", "changed", "a, b", "b, a")],
    ),
    # a secret header's values are shown masked
    (
        answer(headers=(("Authorization", "Bearer one"),)),
        answer(headers=(("Authorization", "Bearer two"),)),
        RULES,
        [("headers.authorization", "changed", mask("Bearer one"), mask("Bearer two"))],
    ),
]


@pytest.mark.parametrize(("primary", "candidate", "rules", "expected"), HEADER_CASES)
def test_status_and_headers(
    primary: Answer, candidate: Answer, rules: CompareRules, expected: list[Row]
) -> None:
    assert rows(primary, candidate, rules) == expected


def cookies(*values: str) -> Answer:
    return answer(headers=tuple(("Set-Cookie", v) for v in values))


COOKIE_CASES: list[tuple[Answer, Answer, CompareRules, list[Row]]] = [
    # another session id: not a difference by default
    (cookies("sid=a1; Path=/"), cookies("sid=b2; Path=/"), RULES, []),
    # ... unless asked for, and then shown masked
    (
        cookies("sid=a1; Path=/"),
        cookies("sid=b2; Path=/"),
        CompareRules(compare_cookie_values=True),
        [("headers.set-cookie.sid", "changed", mask("a1"), mask("b2"))],
    ),
    # attributes: changed, missing flag, extra flag; names are case-insensitive
    (
        cookies("sid=a; Path=/; HttpOnly; Max-Age=60"),
        cookies("sid=a; path=/app; max-age=60; Secure"),
        RULES,
        [
            ("headers.set-cookie.sid.path", "changed", "/", "/app"),
            ("headers.set-cookie.sid.httponly", "missing", "httponly", ""),
            ("headers.set-cookie.sid.secure", "extra", "", "secure"),
        ],
    ),
    # Expires: another date is the clock, not a difference; its absence is one
    (
        cookies(
            "a=1; Expires=Wed, 21 Oct 2026 07:28:00 GMT",
            "b=1; Expires=Wed, 21 Oct 2026 07:28:00 GMT",
        ),
        cookies("a=1; Expires=Wed, 21 Oct 2026 07:28:01 GMT", "b=1"),
        RULES,
        [("headers.set-cookie.b.expires", "missing", "Wed, 21 Oct 2026 07:28:00 GMT", "")],
    ),
    # Domain without its leading dot and in any case, SameSite in any case
    (
        cookies("a=1; Domain=.Club.Example; SameSite=Lax"),
        cookies("a=1; domain=club.example; samesite=lax"),
        RULES,
        [],
    ),
    # cookies missing and extra by name, shown with their values masked
    (
        cookies("sid=a; Path=/", "lang=en"),
        cookies("lang=en", "csrf=t"),
        RULES,
        [
            ("headers.set-cookie.sid", "missing", f"sid={mask('a')}; Path=/", ""),
            ("headers.set-cookie.csrf", "extra", "", f"csrf={mask('t')}"),
        ],
    ),
    # the order of different cookies does not matter
    (cookies("a=1", "b=2"), cookies("b=2", "a=1"), RULES, []),
    # Set-Cookie on the ignore list: nothing about cookies at all
    (
        cookies("sid=a; Path=/"),
        cookies(),
        CompareRules(ignore_headers=frozenset({"set-cookie"})),
        [],
    ),
]


@pytest.mark.parametrize(("primary", "candidate", "rules", "expected"), COOKIE_CASES)
def test_set_cookie(
    primary: Answer, candidate: Answer, rules: CompareRules, expected: list[Row]
) -> None:
    assert rows(primary, candidate, rules) == expected


# --- JSON bodies -----------------------------------------------------------

EVENTS = {"items": [{"id": i, "starts_at": f"2026-12-0{i}", "tags": ["a", "b"]} for i in range(5)]}


def events(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(json.dumps(EVENTS))
    for key, value in changes.items():
        index, field = key.split("__")
        document["items"][int(index[1:])][field] = value
    return document


JSON_CASES: list[tuple[Any, Any, CompareRules, list[Row]]] = [
    # key order never matters
    ({"a": 1, "b": 2}, {"b": 2, "a": 1}, RULES, []),
    # a changed value, with its path
    (
        EVENTS,
        events(i3__starts_at="2027-01-01"),
        RULES,
        [
            ("$.items[3].starts_at", "changed", '"2026-12-03"', '"2027-01-01"'),
        ],
    ),
    # a number became a string
    ({"n": 1}, {"n": "1"}, RULES, [("$.n", "type_changed", "1", '"1"')]),
    # bool is not a number, even where Python's == says True == 1
    ({"ok": True}, {"ok": 1}, RULES, [("$.ok", "type_changed", "true", "1")]),
    # ... also deep inside containers Python finds equal
    ({"a": [{"f": False}]}, {"a": [{"f": 0}]}, RULES, [("$.a[0].f", "type_changed", "false", "0")]),
    # int 1 and float 1.0 are the same number
    ({"n": 1, "m": [2]}, {"n": 1.0, "m": [2.0]}, RULES, []),
    # null against a value
    ({"a": None}, {"a": 0}, RULES, [("$.a", "type_changed", "null", "0")]),
    # keys only on one side
    (
        {"a": 1, "b": {"x": 1}},
        {"a": 1, "c": [1]},
        RULES,
        [
            ("$.b", "missing", '{"x":1}', ""),
            ("$.c", "extra", "", "[1]"),
        ],
    ),
    # a dropped item is one length difference, not a cascade of changes
    ([1, 2, 3, 4], [1, 3, 4], RULES, [("$", "length", "4", "3")]),
    # odd keys are quoted
    (
        {"odd key": 1, "it's": 1},
        {"odd key": 2, "it's": 2},
        RULES,
        [
            ("$['odd key']", "changed", "1", "2"),
            ('$["it\'s"]', "changed", "1", "2"),
        ],
    ),
    # an ignored field, changed or on one side only
    (
        EVENTS,
        events(i1__starts_at="x", i2__extra=1),
        CompareRules(ignore_json=("$.items[*].starts_at", "$.items[*].extra")),
        [],
    ),
    # $..name ignores at any depth
    (
        {"etag": 1, "a": {"b": [{"etag": 2}]}},
        {"etag": 9, "a": {"b": [{"etag": 8}]}},
        CompareRules(ignore_json=("$..etag",)),
        [],
    ),
    # an ignored subtree is dropped whole, differences below it included
    (
        {"meta": {"a": [1], "b": 1}},
        {"meta": {"a": [1, 2]}},
        CompareRules(ignore_json=("$.meta",)),
        [],
    ),
    # ignoring every element hides a length change too
    ({"log": [1, 2]}, {"log": [1]}, CompareRules(ignore_json=("$.log[*]",)), []),
    # ignoring the root ignores the whole body
    ({"a": 1}, {"a": 2}, CompareRules(ignore_json=("$",)), []),
    # unordered: another order is no difference
    (EVENTS, {"items": list(reversed(EVENTS["items"]))}, CompareRules(unordered=("$.items",)), []),
    # unordered at a wildcard path, inside every item
    (
        EVENTS,
        events(i0__tags=["b", "a"], i4__tags=["b", "a"]),
        CompareRules(unordered=("$.items[*].tags",)),
        [],
    ),
    # unordered, other contents: one change at [*] with one element from each side
    (
        {"t": ["a", "b", "c"]},
        {"t": ["c", "a", "x"]},
        CompareRules(unordered=("$.t",)),
        [
            ("$.t[*]", "changed", '"b"', '"x"'),
        ],
    ),
    # unordered, another length
    (
        {"t": ["a", "b"]},
        {"t": ["b"]},
        CompareRules(unordered=("$.t",)),
        [("$.t", "length", "2", "1")],
    ),
    # unordered elements compared without their ignored fields
    (
        {"t": [{"id": 1, "at": 1}, {"id": 2, "at": 2}]},
        {"t": [{"id": 2, "at": 7}, {"id": 1, "at": 8}]},
        CompareRules(unordered=("$.t",), ignore_json=("$.t[*].at",)),
        [],
    ),
    # unordered elements: 1 and 1.0 are one number, true and 1 are not
    ({"t": [1, True]}, {"t": [True, 1.0]}, CompareRules(unordered=("$.t",)), []),
    (
        {"t": [1, 2]},
        {"t": [True, 2]},
        CompareRules(unordered=("$.t",)),
        [("$.t[*]", "changed", "1", "true")],
    ),
    # an unordered array inside an element of another
    (
        {"t": [{"tags": ["a", "b"]}, {"tags": ["c"]}]},
        {"t": [{"tags": ["c"]}, {"tags": ["b", "a"]}]},
        CompareRules(unordered=("$.t", "$.t[*].tags")),
        [],
    ),
]


@pytest.mark.parametrize(("primary", "candidate", "rules", "expected"), JSON_CASES)
def test_json_bodies(
    primary: Any, candidate: Any, rules: CompareRules, expected: list[Row]
) -> None:
    assert rows(js(primary), js(candidate), rules) == expected


def test_json_values_are_shortened() -> None:
    [row] = rows(js({"a": "x" * 500}), js({"a": "y" * 500}))
    assert len(row[2]) == 120
    assert row[2].startswith('"xxx')
    assert row[2].endswith("…")


def test_json_integers_beyond_64_bits_stay_exact() -> None:
    # orjson would read both as the same float.
    big = b'{"id": 123456789012345678901234567890}'
    other = b'{"id": 123456789012345678901234567891}'
    assert rows(answer(big, JSON), answer(other, JSON)) == [
        ("$.id", "changed", "123456789012345678901234567890", "123456789012345678901234567891")
    ]


def test_json_whitespace_is_no_difference() -> None:
    assert rows(answer(b'{"a": [1, 2]}', JSON), answer(b'{\n  "a":[1,2]\n}', JSON)) == []


@pytest.mark.parametrize(
    ("media_a", "media_b"),
    [
        # JSON declared on the primary only, or on the candidate only
        ("application/json", "text/html"),
        ("text/plain", "application/problem+json; charset=utf-8"),
    ],
)
def test_json_against_a_page_is_one_type_change(media_a: str, media_b: str) -> None:
    json_first = media_a.startswith("application")
    page = b"<html>error</html>"
    body_a, body_b = (b'{"a":1}', page) if json_first else (page, b'{"a":1}')
    primary = answer(body_a, (("Content-Type", media_a),))
    candidate = answer(body_b, (("Content-Type", media_b),))
    found = [r for r in rows(primary, candidate) if not r[0].startswith("headers.")]
    shown = ('{"a":1}', "<html>error</html>") if json_first else ("<html>error</html>", '{"a":1}')
    assert found == [("body", "type_changed", *shown)]


def test_deep_json_falls_back_to_text_instead_of_failing() -> None:
    # Too deep for Python's recursion (orjson reads up to 1024 levels) or for orjson itself.
    for depth in (990, 5000):
        a = b"[" * depth + b"1" + b"]" * depth
        b = b"[" * depth + b"2" + b"]" * depth
        [row] = rows(answer(a, JSON), answer(b, JSON))
        assert row[:2] == ("body", "changed")
        assert row[2].startswith("line 1")


def test_nan_is_not_json() -> None:
    assert rows(answer(b'{"a": NaN}', JSON), answer(b'{"a": 1}', JSON)) == [
        ("body", "type_changed", '{"a": NaN}', '{"a":1}')
    ]


# --- text and binary bodies ------------------------------------------------

TEXT_CASES: list[tuple[bytes, bytes, tuple[tuple[str, str], ...], list[Row]]] = [
    # the first differing line, numbered
    (b"a\nb\nc\n", b"a\nx\nc\n", TEXT, [("body", "changed", "line 2: b", "line 2: x")]),
    # a line only one side has
    (b"a\nb\n", b"a\nb\nc\n", TEXT, [("body", "changed", "", "line 3: c")]),
    # only the line ending differs: shown
    (b"a\r\nb", b"a\nb", TEXT, [("body", "changed", "line 1: 'a\\r\\n'", "line 1: 'a\\n'")]),
    # no Content-Type but valid UTF-8: text
    (b"hello", "héllo".encode(), (), [("body", "changed", "line 1: hello", "line 1: héllo")]),
    # the declared charset is used
    (
        "é".encode("latin-1"),
        "è".encode("latin-1"),
        (("Content-Type", "text/plain; charset=ISO-8859-1"),),
        [("body", "changed", "line 1: é", "line 1: è")],
    ),
    # xml is text whatever its type says
    (
        b"<a>1</a>",
        b"<a>2</a>",
        (("Content-Type", "application/xml"),),
        [
            ("body", "changed", "line 1: <a>1</a>", "line 1: <a>2</a>"),
        ],
    ),
    # JSON declared but neither side parses: compared as text
    (b"oops", b"oops!", JSON, [("body", "changed", "line 1: oops", "line 1: oops!")]),
    # binary: another length
    (
        b"\xff\x00\x01",
        b"\xff\x00",
        BINARY,
        [
            ("body", "length", "3 bytes, sha256:", "2 bytes, sha256:"),
        ],
    ),
    # binary: same length, other bytes
    (
        b"\xff\x00",
        b"\xff\x01",
        BINARY,
        [("body", "changed", "2 bytes, sha256:", "2 bytes, sha256:")],
    ),
]


@pytest.mark.parametrize(("a", "b", "headers", "expected"), TEXT_CASES)
def test_text_and_binary_bodies(
    a: bytes, b: bytes, headers: tuple[tuple[str, str], ...], expected: list[Row]
) -> None:
    assert readable(rows(answer(a, headers), answer(b, headers))) == expected


def test_binary_values_carry_distinct_hashes() -> None:
    [(_, _, a, b)] = rows(answer(b"\xff\x00", BINARY), answer(b"\xff\x01", BINARY))
    assert a.startswith("2 bytes, sha256:")
    assert len(a) == len("2 bytes, sha256:") + 12
    assert a != b


def test_a_long_line_is_shown_around_its_first_difference() -> None:
    a = "x" * 300 + "A" + "y" * 100
    b = "x" * 300 + "B" + "y" * 100
    [(_, _, shown_a, shown_b)] = rows(answer(a.encode(), TEXT), answer(b.encode(), TEXT))
    assert shown_a.startswith("line 1, col 301: …")
    assert "xA" in shown_a
    assert "xB" in shown_b
    assert len(shown_a) <= 120


# --- content codings -------------------------------------------------------

DOC = json.dumps({"items": [{"id": i} for i in range(50)]}).encode()
OTHER = json.dumps({"items": [{"id": i} for i in range(49)] + [{"id": 99}]}).encode()


def coded(body: bytes, coding: str) -> Answer:
    return answer(body, (*JSON, ("Content-Encoding", coding)))


CODING_CASES: list[tuple[Answer, Answer, list[Row]]] = [
    # gzip against identity: the same document, only the header differs
    (
        answer(DOC, JSON),
        coded(gzip.compress(DOC), "gzip"),
        [("headers.content-encoding", "extra", "", "gzip")],
    ),
    # gzip on both sides, differing in one field
    (
        coded(gzip.compress(DOC), "gzip"),
        coded(gzip.compress(OTHER), "gzip"),
        [
            ("$.items[49].id", "changed", "49", "99"),
        ],
    ),
    # x-gzip is gzip
    (
        coded(gzip.compress(DOC), "gzip"),
        coded(gzip.compress(DOC), "x-gzip"),
        [
            ("headers.content-encoding", "changed", "gzip", "x-gzip"),
        ],
    ),
    # several gzip members back to back
    (
        coded(gzip.compress(DOC), "gzip"),
        coded(gzip.compress(DOC[:10]) + gzip.compress(DOC[10:]), "gzip"),
        [],
    ),
    # deflate, zlib-wrapped and raw: both read
    (coded(deflated(DOC, 15), "deflate"), coded(deflated(DOC, -15), "deflate"), []),
    # two codings, undone last first
    (
        answer(DOC, JSON),
        coded(deflated(gzip.compress(DOC), 15), "gzip, deflate"),
        [
            ("headers.content-encoding", "extra", "", "gzip, deflate"),
        ],
    ),
    # an unknown coding is compared as raw bytes
    (
        coded(b"\x28\xb5\x2f\xfd\x01", "zstd"),
        coded(b"\x28\xb5\x2f\xfd\x02", "zstd"),
        [
            ("body", "changed", "5 bytes, sha256:", "5 bytes, sha256:"),
        ],
    ),
    # a corrupt gzip stream is compared raw: JSON on the other side
    (
        coded(gzip.compress(DOC), "gzip"),
        coded(gzip.compress(DOC)[:-30], "gzip"),
        [
            (
                "body",
                "type_changed",
                shorten(json.dumps(json.loads(DOC), separators=(",", ":"))),
                f"{len(gzip.compress(DOC)) - 30} bytes, sha256:",
            ),
        ],
    ),
]


@pytest.mark.parametrize(("primary", "candidate", "expected"), CODING_CASES)
def test_content_codings(primary: Answer, candidate: Answer, expected: list[Row]) -> None:
    assert readable(rows(primary, candidate)) == expected


@pytest.mark.skipif(not HAS_BROTLI, reason="brotli is not installed")
def test_brotli_is_decoded_when_available() -> None:
    import brotli  # type: ignore[import-not-found]  # noqa: PLC0415 - optional

    assert rows(coded(brotli.compress(DOC), "br"), coded(brotli.compress(OTHER), "br")) == [
        ("$.items[49].id", "changed", "49", "99")
    ]


@pytest.mark.skipif(HAS_BROTLI, reason="brotli is installed")
def test_brotli_without_the_module_is_compared_raw() -> None:
    [(path, kind, _, _)] = rows(coded(b"\x1b\x01", "br"), coded(b"\x1b\x02", "br"))
    assert (path, kind) == ("body", "changed")


# --- limits ----------------------------------------------------------------


@pytest.mark.parametrize("side", ["primary", "candidate"])
def test_a_truncated_answer_is_not_compared(side: str) -> None:
    whole, cut = answer(b"x"), Answer(status=200, headers=(), body=b"x", truncated=True)
    pair = (cut, whole) if side == "primary" else (whole, cut)
    with pytest.raises(BodyTooLarge) as caught:
        compare(*pair, RULES)
    assert caught.value.side == side
    assert isinstance(caught.value, ProxyError)
    assert "max_body" in str(caught.value)


ZEROS = 64 * 1024 * 1024
LIMIT = 1024 * 1024


def _bomb(coding: str) -> bytes:
    packer = zlib.compressobj(9, wbits={"gzip": 31, "deflate": 15}[coding])
    chunk = b"\0" * (1024 * 1024)
    return b"".join(packer.compress(chunk) for _ in range(ZEROS // len(chunk))) + packer.flush()


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_a_bomb_is_stopped_while_decoding(coding: str) -> None:
    bomb = coded(_bomb(coding), coding)
    tracemalloc.start()
    try:
        with pytest.raises(BodyTooLarge) as caught:
            compare(answer(b"{}", JSON), bomb, CompareRules(max_decoded=LIMIT))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert caught.value.side == "candidate"
    assert caught.value.limit == LIMIT
    # 64 MiB expanded would show here; the limit plus a buffer is what it may cost.
    assert peak < 4 * LIMIT


@pytest.mark.skipif(not HAS_BROTLI, reason="brotli is not installed")
def test_a_brotli_bomb_is_stopped_while_decoding() -> None:
    import brotli  # noqa: PLC0415 - optional

    bomb = coded(brotli.compress(b"\0" * (ZEROS // 4), quality=5), "br")
    tracemalloc.start()
    try:
        with pytest.raises(BodyTooLarge):
            compare(bomb, answer(b"{}", JSON), CompareRules(max_decoded=LIMIT))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * LIMIT


def test_an_unencoded_body_past_the_limit_is_not_compared() -> None:
    with pytest.raises(BodyTooLarge):
        compare(answer(b"a" * 101, TEXT), answer(b"b", TEXT), CompareRules(max_decoded=100))


def test_identical_raw_bodies_are_not_decoded() -> None:
    # Equal bytes need no reading; the limit protects the decoding only.
    bomb = coded(_bomb("gzip"), "gzip")
    assert compare(bomb, bomb, CompareRules(max_decoded=LIMIT)) == ()


def test_differences_come_status_headers_body() -> None:
    found = compare(
        answer(b'{"a":1}', (*JSON, ("X-A", "1")), status=200),
        answer(b'{"a":2}', (*JSON, ("X-A", "2")), status=201),
        RULES,
    )
    assert [d.path for d in found] == ["status", "headers.x-a", "$.a"]
    assert [d.kind for d in found] == [DiffKind.CHANGED] * 3
    assert found[2].signature == "changed:$.a"
