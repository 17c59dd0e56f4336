"""ShadowBook's decisions, groups, noise, verdict, bounds and suggestions.

Every test runs twice: on a book kept in memory, and on one writing to a real
PostgreSQL (each `report` writes the book's deltas first and answers from the
store), so both give the same answers.
"""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from proxy.routing.model import Shadow, ShadowStore, Verdict
from proxy.shadow._examples import MAX_EXAMPLE_BODY
from proxy.shadow._noise import MIN_NOISE_SAMPLES
from proxy.shadow._tally import EXAMPLE_REFRESH, MAX_EXAMPLES, MAX_GROUPS
from proxy.shadow.model import Answer, Difference, DiffKind, Example, Outcome, SkipReason
from proxy.shadow.results import RuleKind, ShadowBook, suggestions_yaml

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

ROUTE = "items"
START = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


def change(path: str, kind: DiffKind = DiffKind.CHANGED) -> Difference:
    return Difference(path=path, kind=kind, primary="1", candidate="2")


def answer(body: bytes = b'{"a": 1}', *, truncated: bool = False) -> Answer:
    return Answer(
        status=200, headers=(("content-type", "application/json"),), body=body, truncated=truncated
    )


class Examples:
    """An `example` callable that counts its calls."""

    def __init__(self, clock: Clock, *, body: bytes = b'{"a": 1}') -> None:
        self.clock = clock
        self.body = body
        self.calls = 0

    def __call__(self) -> Example:
        self.calls += 1
        return Example(
            at=self.clock.now,
            method="GET",
            target=f"/api/items?n={self.calls}",
            request_headers=(("accept", "application/json"),),
            primary=answer(),
            candidate=answer(self.body),
            secondary=None,
            differences=(change("$.a"),),
        )


def shadow(min_requests: int = 10, min_match: float = 0.9) -> Shadow:
    return Shadow(to="new", verdict=Verdict(min_requests=min_requests, min_match=min_match))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["memory", "postgresql"])
def store(request: pytest.FixtureRequest) -> ShadowStore | None:
    """No store, or a real PostgreSQL; written only when a test asks for a report."""
    if request.param == "memory":
        return None
    return ShadowStore(dsn=request.getfixturevalue("pg_dsn"), flush_interval=60.0)


@pytest.fixture
async def book(store: ShadowStore | None, clock: Clock) -> AsyncIterator[ShadowBook]:
    found = ShadowBook(store=store, now=clock)
    found.configure({ROUTE: shadow()})
    await found.start()
    yield found
    await found.close()


def no_example() -> Example:
    raise AssertionError("no example was wanted")


async def route_report(book: ShadowBook, route_id: str = ROUTE) -> dict[str, Any]:
    found = await book.report(route_id)
    assert found is not None
    assert found["store_ok"] is True
    return found


def groups(found: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {g["signature"]: g for g in found["differences"]}


def learn_noise(book: ShadowBook, clock: Clock, noisy: list[Difference], samples: int) -> None:
    """`samples` matching requests that were noise-sampled; `noisy` differed in each."""
    for _ in range(samples):
        assert book.compared(ROUTE, [], noisy, no_example) is Outcome.MATCH


async def test_match_mismatch_and_noise_of_one_request(book: ShadowBook, clock: Clock) -> None:
    examples = Examples(clock)
    assert book.compared(ROUTE, [], None, no_example) is Outcome.MATCH
    assert book.compared(ROUTE, [change("$.a")], None, examples) is Outcome.MISMATCH
    # The primary differed from itself at the same place: noise, not a mismatch.
    own = [change("$.updated_at")]
    assert book.compared(ROUTE, [change("$.updated_at")], own, examples) is Outcome.NOISE
    # One real difference beside the noisy one still makes a mismatch.
    assert (
        book.compared(ROUTE, [change("$.updated_at"), change("$.b")], own, examples)
        is Outcome.MISMATCH
    )

    found = await route_report(book)
    assert (found["compared"], found["matched"], found["mismatched"], found["noise"]) == (
        4,
        1,
        2,
        1,
    )
    assert found["match_rate"] == pytest.approx(1 / 3)  # noise is left out of the rate
    assert found["noise_samples"] == 2
    by_signature = groups(found)
    assert by_signature["changed:$.updated_at"]["count"] == 2
    assert by_signature["changed:$.updated_at"]["mismatches"] == 0
    assert by_signature["changed:$.updated_at"]["noise_count"] == 2
    assert by_signature["changed:$.b"]["mismatches"] == 1


async def test_indices_collapse_and_count_once_per_request(book: ShadowBook, clock: Clock) -> None:
    two = [change("$.items[0].starts_at"), change("$.items[3].starts_at")]
    book.compared(ROUTE, two, None, Examples(clock))
    clock.now += 5
    book.compared(ROUTE, [change("$.items[7].starts_at")], None, Examples(clock))

    found = await route_report(book)
    group = groups(found)["changed:$.items[*].starts_at"]
    assert (group["count"], group["mismatches"]) == (2, 2)
    assert (group["path"], group["kind"]) == ("$.items[*].starts_at", "changed")
    assert group["first_seen"] == "2023-11-14T22:13:20+00:00"
    assert group["last_seen"] == "2023-11-14T22:13:25+00:00"
    # The example keeps the concrete paths.
    assert group["examples"][0]["differences"][0]["path"] == "$.a"


async def test_learned_noise_is_not_a_mismatch(book: ShadowBook, clock: Clock) -> None:
    learn_noise(book, clock, [change("$.updated_at")], MIN_NOISE_SAMPLES - 1)
    # Too few samples to call the field noisy: a difference there still counts.
    assert book.compared(ROUTE, [change("$.updated_at")], None, Examples(clock)) is Outcome.MISMATCH
    learn_noise(book, clock, [change("$.updated_at")], 1)
    await route_report(book)  # the store's book decides with the stats read back
    assert book.compared(ROUTE, [change("$.updated_at")], None, Examples(clock)) is Outcome.NOISE

    group = groups(await route_report(book))["changed:$.updated_at"]
    assert group["noisy"] is True
    assert (group["noise_count"], group["count"], group["mismatches"]) == (MIN_NOISE_SAMPLES, 2, 1)


async def test_noise_threshold_is_above_one_percent(book: ShadowBook, clock: Clock) -> None:
    learn_noise(book, clock, [change("$.rare")], 2)
    learn_noise(book, clock, [], 198)
    await route_report(book)
    # 2 of 200 samples is 1%: not above the threshold, so still a mismatch.
    assert book.compared(ROUTE, [change("$.rare")], None, Examples(clock)) is Outcome.MISMATCH
    learn_noise(book, clock, [change("$.rare")], 1)
    await route_report(book)
    assert book.compared(ROUTE, [change("$.rare")], None, Examples(clock)) is Outcome.NOISE


async def test_a_missing_field_is_not_hidden_by_its_noisy_value(
    book: ShadowBook, clock: Clock
) -> None:
    learn_noise(book, clock, [change("$.updated_at")], 20)
    await route_report(book)
    missing = [change("$.updated_at", DiffKind.MISSING)]
    assert book.compared(ROUTE, missing, None, Examples(clock)) is Outcome.MISMATCH

    by_signature = groups(await route_report(book))
    assert by_signature["changed:$.updated_at"]["noisy"] is True
    assert by_signature["missing:$.updated_at"]["noisy"] is False
    assert by_signature["missing:$.updated_at"]["mismatches"] == 1


async def test_verdict_from_collecting_to_ready_and_not_ready(
    book: ShadowBook, clock: Clock
) -> None:
    for _ in range(9):
        book.compared(ROUTE, [], None, no_example)
    book.compared(ROUTE, [change("$.x")], [change("$.x")], Examples(clock))  # noise: not judged
    found = await route_report(book)
    assert found["verdict"] == "collecting"
    assert found["verdict_reason"] == "9 of 10 requests compared (noise left out)"
    assert (found["min_requests"], found["min_match"]) == (10, 0.9)

    book.compared(ROUTE, [], None, no_example)
    found = await route_report(book)
    assert (found["verdict"], found["match_rate"]) == ("ready", 1.0)

    # Four groups with 4, 3, 2, 1 mismatches: the reason names the top three.
    for n, path in ((4, "$.a"), (3, "$.b"), (2, "$.c"), (1, "$.d")):
        for _ in range(n):
            book.compared(ROUTE, [change(path)], None, Examples(clock))
    found = await route_report(book)
    assert found["verdict"] == "not_ready"
    assert found["match_rate"] == pytest.approx(10 / 20)
    reason = found["verdict_reason"]
    assert "changed:$.a (4), changed:$.b (3), changed:$.c (2)" in reason
    assert "$.d" not in reason


async def test_skips_and_errors_are_counted_apart(book: ShadowBook) -> None:
    book.skipped(ROUTE, SkipReason.SAMPLED_OUT)
    book.skipped(ROUTE, SkipReason.SAMPLED_OUT)
    book.skipped(ROUTE, SkipReason.UNSAFE_METHOD)
    book.skipped(ROUTE, SkipReason.TIMEOUT)
    book.skipped(ROUTE, SkipReason.CANDIDATE_ERROR)
    book.skipped(
        ROUTE, SkipReason.PRIMARY_ERROR
    )  # the primary failing is not the candidate's error

    found = await route_report(book)
    assert found["skipped"] == {"primary_error": 1, "sampled_out": 2, "unsafe_method": 1}
    assert found["errors"] == 2
    assert found["error_reasons"] == {"candidate_error": 1, "timeout": 1}
    assert (found["compared"], found["match_rate"], found["verdict"]) == (0, None, "collecting")
    assert sorted(book.outcome_counts()) == [
        (ROUTE, "error", "candidate_error", 1),
        (ROUTE, "error", "timeout", 1),
        (ROUTE, "skipped", "primary_error", 1),
        (ROUTE, "skipped", "sampled_out", 2),
        (ROUTE, "skipped", "unsafe_method", 1),
    ]


async def test_a_group_keeps_five_examples_the_last_one_refreshed(
    book: ShadowBook, clock: Clock
) -> None:
    examples = Examples(clock)
    for _ in range(MAX_EXAMPLES + 3):
        clock.now += 1
        book.compared(ROUTE, [change("$.a")], None, examples)
    assert examples.calls == MAX_EXAMPLES  # not called once the group had its examples

    clock.now += EXAMPLE_REFRESH
    book.compared(ROUTE, [change("$.a")], None, examples)
    assert examples.calls == MAX_EXAMPLES + 1
    kept = groups(await route_report(book))["changed:$.a"]["examples"]
    assert [e["target"] for e in kept] == [f"/api/items?n={n}" for n in (1, 2, 3, 4, 6)]


async def test_a_route_keeps_at_most_200_groups(book: ShadowBook, clock: Clock) -> None:
    for n in range(MAX_GROUPS + 5):
        book.compared(ROUTE, [change(f"$.field{n}")], None, Examples(clock))
    book.compared(ROUTE, [change("$.field0")], None, Examples(clock))  # an old group still counts

    found = await route_report(book)
    assert len(found["differences"]) == MAX_GROUPS
    assert found["groups_dropped"] == 5
    assert groups(found)["changed:$.field0"]["count"] == 2
    assert "changed:$.field204" not in groups(found)
    assert found["mismatched"] == MAX_GROUPS + 6  # the requests count, kept or not


async def test_reset_forgets_the_route(book: ShadowBook, clock: Clock) -> None:
    book.compared(ROUTE, [change("$.a")], None, Examples(clock))
    book.skipped(ROUTE, SkipReason.SAMPLED_OUT)
    assert await book.reset(ROUTE) is True
    found = await route_report(book)
    assert (found["compared"], found["skipped"], found["differences"]) == (0, {}, [])
    assert await book.reset("never-seen") is False
    assert await book.report("never-seen") is None


async def test_a_route_no_longer_shadowed_keeps_its_counts(book: ShadowBook) -> None:
    book.compared(ROUTE, [], None, no_example)
    book.configure({"other": shadow()})
    found = await book.report()
    assert found is not None
    listed = {r["id"]: r for r in found["routes"]}
    assert (listed["other"]["active"], listed["other"]["compared"]) == (True, 0)
    assert (listed[ROUTE]["active"], listed[ROUTE]["matched"]) == (False, 1)
    assert listed[ROUTE]["shadow_to"] == "new"
    assert found["store"] == book.store_kind
    assert "examples" not in listed[ROUTE]


async def test_suggestions_and_their_yaml(book: ShadowBook, clock: Clock) -> None:
    noisy = [
        change("$.items[2].updated_at"),
        change("headers.etag"),
        change("status"),  # no ignore rule for a status
        change("headers.set-cookie.session"),  # ignoring Set-Cookie would hide every cookie
    ]
    learn_noise(book, clock, noisy, 10)
    learn_noise(book, clock, [change("$.items[0].updated_at", DiffKind.MISSING)], 10)
    learn_noise(book, clock, [change("$.quiet")], 1)
    learn_noise(book, clock, [], 79)  # 100 samples: $.quiet differed in 1%, not above it

    found = await book.suggestions(ROUTE)
    assert [(s.kind, s.path) for s in found] == [
        (RuleKind.HEADER, "etag"),
        (RuleKind.JSON, "$.items[*].updated_at"),
    ]
    assert found[1].noise_rate == pytest.approx(0.1)
    assert "changed 10.0%" in found[1].reason
    assert "missing 10.0%" in found[1].reason
    assert found[0].as_dict()["kind"] == "header"

    text = suggestions_yaml(ROUTE, found)
    assert yaml.safe_load(text) == {
        "ignore": {"headers": ["etag"], "json": ["$.items[*].updated_at"]}
    }
    assert "    # noise rate 10.0%: " in text
    assert suggestions_yaml(ROUTE, []).startswith("# ")
    assert yaml.safe_load(suggestions_yaml(ROUTE, [])) is None


async def test_example_json(book: ShadowBook, clock: Clock) -> None:
    body = "é".encode() * MAX_EXAMPLE_BODY  # cut inside a character
    book.compared(ROUTE, [change("$.text")], None, Examples(clock, body=body))
    book.compared(ROUTE, [change("$.bin")], None, Examples(clock, body=b"\x00\xff\x01"))

    by_signature = groups(await route_report(book))
    text = by_signature["changed:$.text"]["examples"][0]
    assert text["method"] == "GET"
    assert text["request_headers"] == [["accept", "application/json"]]
    assert text["candidate"]["body"] == "é" * (MAX_EXAMPLE_BODY // 2)
    assert (text["candidate"]["body_encoding"], text["candidate"]["body_truncated"]) == (
        "utf-8",
        True,
    )
    assert (text["primary"]["body"], text["primary"]["body_truncated"]) == ('{"a": 1}', False)
    assert text["secondary"] is None
    assert text["differences"] == [
        {
            "path": "$.a",
            "kind": "changed",
            "signature": "changed:$.a",
            "primary": "1",
            "candidate": "2",
        }
    ]
    binary = by_signature["changed:$.bin"]["examples"][0]["candidate"]
    assert binary["body_encoding"] == "base64"
    assert base64.b64decode(binary["body"]) == b"\x00\xff\x01"
    json.dumps(by_signature)  # all of it is JSON


async def test_a_failing_example_does_not_stop_counting(
    book: ShadowBook, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> Example:
        raise RuntimeError("redaction bug")

    assert book.compared(ROUTE, [change("$.a")], None, broken) is Outcome.MISMATCH
    found = await route_report(book)
    assert found["mismatched"] == 1
    assert groups(found)["changed:$.a"]["examples"] == []
    assert "proxy.shadow.example_failed" in caplog.messages


def test_outcome_counts_of_a_fresh_book() -> None:
    assert list(ShadowBook().outcome_counts()) == []
    assert ShadowBook().store_kind == "memory"
    assert ShadowBook(store=ShadowStore(dsn="postgresql://x/y")).store_kind == "postgresql"
