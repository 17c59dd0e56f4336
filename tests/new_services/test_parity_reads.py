"""Table-driven parity, reads: every GET endpoint, success and error cases, on twin data.

Each case goes to club-api and to new_services; status, body bytes and every
header but Date must be identical. A case whose body holds the time of the
answer (`generated_at`) is re-sent when the two answers straddle a second
boundary; nothing is ignored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.new_services.conftest import Twins

ALICE = {"Authorization": "Bearer seed-token-1"}

# (method, path, extra request kwargs); one comment per group of cases.
READ_CASES: list[tuple[str, str, dict[str, Any]]] = [
    # service
    ("GET", "/health", {}),
    ("GET", "/api/stats", {}),
    ("HEAD", "/api/stats", {}),
    # users: detail, unicode/nulls/big numbers, fractional pre-1970, infinity, non-UTC
    ("GET", "/api/users/1", {}),
    ("GET", "/api/users/7", {}),
    ("GET", "/api/users/1001", {}),
    ("GET", "/api/users/1002", {}),
    ("GET", "/api/users/1003", {}),
    ("GET", "/api/users/1004", {}),
    ("HEAD", "/api/users/1", {}),
    # users: ids that are not ids, or name nobody
    ("GET", "/api/users/999999", {}),
    ("GET", "/api/users/0", {}),
    ("GET", "/api/users/01", {}),
    ("GET", "/api/users/-1", {}),
    ("GET", "/api/users/+1", {}),
    ("GET", "/api/users/1.0", {}),
    ("GET", "/api/users/abc", {}),
    ("GET", "/api/users/%31", {}),
    ("GET", "/api/users/%C3%BC", {}),
    ("GET", "/api/users/9223372036854775807", {}),
    ("GET", "/api/users/9223372036854775808", {}),
    ("GET", "/api/users/99999999999999999999", {}),
    # users: list, filters and pagination edges
    ("GET", "/api/users", {}),
    ("GET", "/api/users?limit=1", {}),
    ("GET", "/api/users?limit=100", {}),
    ("GET", "/api/users?limit=100&offset=100", {}),
    ("GET", "/api/users?offset=123", {}),
    ("GET", "/api/users?offset=124", {}),
    ("GET", "/api/users?offset=1000000", {}),
    ("GET", "/api/users?active=true", {}),
    ("GET", "/api/users?active=false&limit=5&offset=2", {}),
    ("GET", "/api/users?limit=01&offset=00", {}),
    ("GET", "/api/users?limit=5&limit=6", {}),
    ("GET", "/api/users?unknown=1", {}),
    # users: invalid query, and the order checks run in (active, limit, offset)
    ("GET", "/api/users?limit=0", {}),
    ("GET", "/api/users?limit=101", {}),
    ("GET", "/api/users?limit=-1", {}),
    ("GET", "/api/users?limit=abc", {}),
    ("GET", "/api/users?limit=", {}),
    ("GET", "/api/users?limit=%201", {}),
    ("GET", "/api/users?offset=1000001", {}),
    ("GET", "/api/users?offset=99999999", {}),
    ("GET", "/api/users?active=yes", {}),
    ("GET", "/api/users?active=TRUE", {}),
    ("GET", "/api/users?active=", {}),
    ("GET", "/api/users?active=true&limit=0", {}),
    ("GET", "/api/users?active=bad&limit=0&offset=-1", {}),
    ("GET", "/api/users?limit=0&offset=-1", {}),
    # events: detail (registered, spots_left), large jsonb, infinity, naive times, null meta
    ("GET", "/api/events/1", {}),
    ("GET", "/api/events/3", {}),
    ("GET", "/api/events/12", {}),
    ("GET", "/api/events/1001", {}),
    ("GET", "/api/events/1002", {}),
    ("GET", "/api/events/1003", {}),
    ("GET", "/api/events/1004", {}),
    ("GET", "/api/events/1005", {}),
    ("GET", "/api/events/99999", {}),
    ("GET", "/api/events/x1", {}),
    ("GET", "/api/events/00", {}),
    # events: list (generated_at is the answer time)
    ("GET", "/api/events", {}),
    ("GET", "/api/events?active=true&limit=2", {}),
    ("GET", "/api/events?active=false", {}),
    ("GET", "/api/events?limit=100&offset=30", {}),
    ("GET", "/api/events?offset=45", {}),
    ("GET", "/api/events?limit=1000", {}),
    ("GET", "/api/events?active=1", {}),
    # routing errors: unknown paths, wrong methods (405 with Allow)
    ("GET", "/api/nope", {}),
    ("GET", "/api/users/1/extra", {}),
    ("GET", "/api/users/", {}),
    ("PUT", "/api/users/1", {}),
    ("DELETE", "/api/users", {}),
    ("POST", "/api/stats", {}),
    ("PATCH", "/api/events/1/registrations", {}),
    ("GET", "/api/events/1/registrations/me", {}),
    # auth is not needed for reads; a header is ignored
    ("GET", "/api/users/2", {"headers": ALICE}),
    ("GET", "/api/users/2", {"headers": {"Authorization": "Bearer nope"}}),
]


async def same_answer(twins: Twins, method: str, path: str, **kw: Any) -> str | None:
    """None when both sides answer alike, else a description of the difference."""
    legacy, new = await twins.both(method, path, **kw)
    for _retry in range(2):
        if legacy == new or b'"generated_at"' not in legacy.body:
            break  # equal, or not a time-of-answer body that a retry could change
        legacy, new = await twins.both(method, path, **kw)
    if legacy == new:
        return None
    return (
        f"{method} {path}:\n  legacy {legacy.status} {legacy.headers} {legacy.body[:300]!r}"
        f"\n  new    {new.status} {new.headers} {new.body[:300]!r}"
    )


async def test_reads_are_identical(twins: Twins) -> None:
    problems = [
        problem
        for method, path, kw in READ_CASES
        if (problem := await same_answer(twins, method, path, **kw)) is not None
    ]
    assert not problems, "\n".join(problems)


async def test_parity_check_can_fail(twins: Twins) -> None:
    # Guard against a comparison that passes vacuously: different rows must differ.
    legacy = await twins.one(twins.legacy, "GET", "/api/users/1")
    new = await twins.one(twins.new, "GET", "/api/users/2")
    assert legacy.status == new.status == 200
    assert legacy != new


async def test_edge_values_are_as_pgbank_reads_them(twins: Twins) -> None:
    # The floor rule, infinity and non-UTC input, spelled out (not only "same as legacy").
    user = await (await twins.new.get("/api/users/1001")).json()
    assert user["created_at"] == -1  # 1969-12-31T23:59:59.5Z floors to -1
    assert (await (await twins.new.get("/api/users/1002")).json())["created_at"] == 253402300799
    assert (await (await twins.new.get("/api/users/1003")).json())["created_at"] == 1711841400
    event = await (await twins.new.get("/api/events/1004")).json()
    assert (event["starts_at"], event["updated_at"]) == (253402300799, -62135596800)
    big = await twins.new.get("/api/events/1001")
    assert len(await big.read()) > 100_000
