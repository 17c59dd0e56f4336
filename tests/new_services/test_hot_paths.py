"""The fast paths: one statement answering several checks, and the pool's cheap release.

Registrations and direct messages read the caller's session together with
the event or the recipient, and registrations decide refusals without the
row lock; the answers must still come in club-api's check order, which these
parity cases pin where one statement could blur it. The Tortoise pool
releases connections without asyncpg's reset query; an open transaction must
still be rolled back on release.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import asyncpg

from new_services.services import SERVICES
from tests.new_services.test_parity_reads import same_answer
from tests.new_services.test_parity_writes import U1, U2, bearer

if TYPE_CHECKING:
    from tests.new_services.conftest import Twins

# U1 is registered for the closed event 1003 and for event 1002 (no places).
STANDING_SQL = """
    INSERT INTO registrations (user_id, event_id) VALUES (1, 1003), (1, 1002);
"""

# (method, path, request kwargs): cases where a combined statement could change the order.
ORDER_CASES: list[tuple[str, str, dict[str, Any]]] = [
    # registrations: 401 (bad or expired token, inactive user) comes before 400 and 404
    ("POST", "/api/events/abc/registrations", {"headers": bearer("nope")}),
    ("POST", "/api/events/99999/registrations", {"headers": bearer("tok-expired")}),
    ("POST", "/api/events/1003/registrations", {"headers": bearer("tok-1002")}),
    # an id beyond bigint is 400, never a query parameter
    ("POST", "/api/events/9223372036854775808/registrations", {"headers": U1}),
    # closed beats already registered; already registered beats full; full
    ("POST", "/api/events/1003/registrations", {"headers": U1}),
    ("POST", "/api/events/1002/registrations", {"headers": U1}),
    ("POST", "/api/events/1002/registrations", {"headers": U2}),
    # messages: 401 before a bad id, a bad id before a bad body, a bad body before 404
    ("POST", "/api/users/abc/messages", {"headers": bearer("nope"), "json": {"text": "hi"}}),
    ("POST", "/api/users/0/messages", {"headers": U1, "data": b"not json"}),
    ("POST", "/api/users/99999/messages", {"headers": U1, "data": b"not json"}),
    ("POST", "/api/users/9223372036854775808/messages", {"headers": U1, "json": {"text": "x"}}),
    # an inactive recipient exists: 202
    ("POST", "/api/users/1002/messages", {"headers": U1, "json": {"text": "hi"}}),
]


async def _on_both(twins: Twins, sql: str) -> None:
    for dsn in twins.dsns:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()


async def test_check_order_is_the_legacy_one(twins: Twins) -> None:
    await _on_both(twins, STANDING_SQL)
    problems = [
        problem
        for method, path, kw in ORDER_CASES
        if (problem := await same_answer(twins, method, path, **kw)) is not None
    ]
    assert not problems, "\n".join(problems)


async def _last_queries(dsn: str) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT query FROM pg_stat_activity"
            " WHERE application_name = 'club-new-services' AND datname = current_database()"
        )
    finally:
        await conn.close()
    return [row["query"] for row in rows]


async def test_release_sends_no_reset_query(twins: Twins) -> None:
    db = twins.new.app[SERVICES].orm.db()
    marker = "SELECT 'h10-release-marker' AS marker"
    await db.execute_query(marker)
    # The connection is back in the pool; its last statement is still ours,
    # not asyncpg's `SELECT pg_advisory_unlock_all(); CLOSE ALL; ...`.
    queries = await _last_queries(twins.dsns[1])
    assert marker in queries
    assert not [q for q in queries if "pg_advisory_unlock_all" in q]


async def test_open_transaction_is_rolled_back_on_release(twins: Twins) -> None:
    db = twins.new.app[SERVICES].orm.db()
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        async with db.acquire_connection() as conn:
            await conn.execute("BEGIN")
            await conn.execute("UPDATE users SET name = 'uncommitted' WHERE id = 1")
    finally:
        loop.set_exception_handler(None)
    # asyncpg rolled it back (and said so) before the connection went back to the pool.
    assert any("active transaction" in str(c.get("message")) for c in reported)
    _, rows = await db.execute_query(
        "SELECT name, pg_current_xact_id_if_assigned() AS x FROM users WHERE id = 1"
    )
    assert rows[0]["name"] != "uncommitted"
    assert rows[0]["x"] is None
