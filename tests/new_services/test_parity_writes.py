"""Table-driven parity, writes: one script of requests run on both twins, in order.

Both sides start from identical databases; after every step the answers must
be identical, and at the end so must the tables. The registrations' clock is
frozen by a column default on both twins (conftest), so `created_at` of a new
registration is exact too, and it proves the new side lets PostgreSQL stamp it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import asyncpg

from tests.new_services.conftest import FROZEN_NOW
from tests.new_services.test_parity_reads import same_answer

if TYPE_CHECKING:
    import pytest

    from tests.new_services.conftest import Twins


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


U1, U2, U3 = bearer("seed-token-1"), bearer("seed-token-2"), bearer("seed-token-3")
JSON = {"Content-Type": "application/json"}

# (method, path, request kwargs), run in this order on both sides.
WRITE_SCRIPT: list[tuple[str, str, dict[str, Any]]] = [
    # authentication first, in every form it fails
    ("POST", "/api/events/1/registrations", {}),
    ("POST", "/api/events/abc/registrations", {}),
    ("POST", "/api/events/1/registrations", {"headers": {"Authorization": "Basic dXNlcg=="}}),
    ("POST", "/api/events/1/registrations", {"headers": {"Authorization": "Bearer "}}),
    ("POST", "/api/events/1/registrations", {"headers": {"Authorization": "bearer seed-token-1"}}),
    ("POST", "/api/events/1/registrations", {"headers": bearer("nope")}),
    ("POST", "/api/events/1/registrations", {"headers": bearer("tok-expired")}),
    ("POST", "/api/events/1/registrations", {"headers": bearer("tok-1002")}),
    ("POST", "/api/events/1/registrations?token=seed-token-1", {}),
    # then the id, then existence and state: 404, 422 closed, 422 full
    ("POST", "/api/events/abc/registrations", {"headers": U1}),
    ("POST", "/api/events/99999/registrations", {"headers": U1}),
    ("POST", "/api/events/1003/registrations", {"headers": U1}),
    ("POST", "/api/events/1002/registrations", {"headers": U1}),
    # 201, the detail reflects it, 409 again, 422 for the last place taken
    ("GET", "/api/events/1001", {}),
    ("POST", "/api/events/1001/registrations", {"headers": U1, "data": b"ignored body"}),
    ("GET", "/api/events/1001", {}),
    ("POST", "/api/events/1001/registrations", {"headers": U1}),
    ("POST", "/api/events/1001/registrations", {"headers": U2}),
    ("POST", "/api/events/5/registrations", {"headers": bearer("tok-1001")}),
    ("POST", "/api/events/5/registrations", {"headers": U3}),
    ("GET", "/api/events/5", {}),
    # cancellation: 204, 404 registration, 404 event, 401, then register again
    ("DELETE", "/api/events/1001/registrations/me", {"headers": U1}),
    ("DELETE", "/api/events/1001/registrations/me", {"headers": U1}),
    ("DELETE", "/api/events/99999/registrations/me", {"headers": U1}),
    ("DELETE", "/api/events/1001/registrations/me", {}),
    ("DELETE", "/api/events/x/registrations/me", {"headers": U1}),
    ("POST", "/api/events/1001/registrations", {"headers": U2}),
    ("GET", "/api/events/1001", {}),
    # direct messages: auth, id, body, recipient, then 202
    ("POST", "/api/users/2/messages", {"json": {"text": "hi"}}),
    ("POST", "/api/users/0/messages", {"headers": U1, "json": {"text": "hi"}}),
    ("POST", "/api/users/2/messages", {"headers": U1, "data": b"not json"}),
    ("POST", "/api/users/2/messages", {"headers": U1, "data": b""}),
    ("POST", "/api/users/2/messages", {"headers": U1, "json": ["text"]}),
    ("POST", "/api/users/2/messages", {"headers": U1, "json": {}}),
    ("POST", "/api/users/2/messages", {"headers": U1, "json": {"text": "   \n"}}),
    ("POST", "/api/users/2/messages", {"headers": U1, "json": {"text": 5}}),
    ("POST", "/api/users/2/messages", {"headers": U1, "json": {"text": "x" * 2001}}),
    ("POST", "/api/users/99999/messages", {"headers": U1, "json": {"text": "hi"}}),
    ("POST", "/api/users/2/messages", {"headers": U1, "json": {"text": "x" * 2000}}),
    ("POST", "/api/users/1001/messages", {"headers": U1, "json": {"text": 'Привет 🎾 "q"'}}),
    ("POST", "/api/users/2/messages", {"headers": {**U1, **JSON}, "data": b'{"text":"a","x":1}'}),
    # counters after the writes
    ("GET", "/api/stats", {}),
]

_TABLES_SQL = """
    SELECT 'registrations' AS t, json_agg(r ORDER BY id)::text AS rows FROM registrations r
    UNION ALL SELECT 'events', json_agg(e ORDER BY id)::text FROM events e
    UNION ALL SELECT 'users', json_agg(u ORDER BY id)::text FROM users u
"""


async def dump(dsn: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(_TABLES_SQL)
    finally:
        await conn.close()


async def test_write_script_is_identical(twins: Twins) -> None:
    problems = []
    for method, path, kw in WRITE_SCRIPT:
        problem = await same_answer(twins, method, path, **kw)
        if problem is not None:
            problems.append(problem)
    assert not problems, "\n".join(problems)
    legacy_rows, new_rows = await dump(twins.dsns[0]), await dump(twins.dsns[1])
    assert legacy_rows == new_rows


async def test_new_registration_is_stamped_by_the_database(twins: Twins) -> None:
    resp = await twins.new.post("/api/events/2/registrations", headers=U1)
    assert resp.status == 201
    body = await resp.json()
    assert list(body) == ["id", "user_id", "event_id", "created_at"]
    assert (body["user_id"], body["event_id"], body["created_at"]) == (1, 2, FROZEN_NOW)


async def test_concurrent_last_place_has_one_winner(twins: Twins) -> None:
    # Event 1001 has one place: the row lock lets exactly one of many requests in.
    import asyncio  # noqa: PLC0415

    tokens = [bearer(f"seed-token-{n}") for n in range(1, 9)]
    responses = await asyncio.gather(
        *(twins.new.post("/api/events/1001/registrations", headers=h) for h in tokens)
    )
    statuses = sorted(r.status for r in responses)
    assert statuses == [201] + [422] * 7


async def test_refused_registrations_log_no_leaked_transaction(
    twins: Twins, caplog: pytest.LogCaptureFixture
) -> None:
    # Issue 17: each refusal inside club-api's PgBank transaction (404, 422 closed,
    # 409, 422 full) made asyncpg log "Resetting connection with an active transaction".
    refusals = [
        ("/api/events/99999/registrations", U1, 404),
        ("/api/events/1003/registrations", U1, 422),
        ("/api/events/1002/registrations", U1, 422),
        ("/api/events/1001/registrations", U1, 201),
        ("/api/events/1001/registrations", U1, 409),
        ("/api/events/1001/registrations", U2, 422),
    ]
    with caplog.at_level(logging.DEBUG):
        for path, headers, status in refusals:
            legacy = await twins.one(twins.legacy, "POST", path, headers=headers)
            assert legacy.status == status, legacy
        # club-api still serves reads and writes on the same pool afterwards.
        legacy = await twins.one(twins.legacy, "POST", "/api/events/5/registrations", headers=U3)
        assert legacy.status in {201, 422}, legacy
    leaked = [r.getMessage() for r in caplog.records if "active transaction" in r.getMessage()]
    assert leaked == []
