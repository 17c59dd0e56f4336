"""GET /api/users/{id} and GET /api/users."""

from __future__ import annotations

import pytest

from tests.club_api.conftest import ALICE_CREATED

ALICE_JSON = {
    "id": 1,
    "name": "Alice",
    "email": "alice@club.example",
    # jsonb comes back nested (jsonb orders keys by length, then bytewise).
    "profile": {"city": "Riga", "sports": ["padel", "yoga"], "contact": {"phone": "+371000"}},
    "active": True,
    "created_at": ALICE_CREATED,
}


async def test_get_user(client) -> None:
    resp = await client.get("/api/users/1")
    assert resp.status == 200
    assert resp.content_type == "application/json"
    assert await resp.json() == ALICE_JSON


async def test_get_user_body_is_compact_utf8_in_fixed_key_order(client) -> None:
    # The exact bytes are the contract the new handlers must reproduce.
    body = await (await client.get("/api/users/2")).read()
    assert (
        body
        == (
            '{"id":2,"name":"Борис","email":"boris@club.example","profile":{"city":"Kazan"},'
            '"active":true,"created_at":1600000100}'
        ).encode()
    )


async def test_get_user_not_found(client) -> None:
    resp = await client.get("/api/users/999")
    assert resp.status == 404
    assert await resp.json() == {"error": "user not found"}


@pytest.mark.parametrize(
    "raw",
    [
        "abc",  # not a number
        "0",  # ids are positive
        "07",  # no leading zeros
        "-1",  # no sign
        "9223372036854775808",  # above bigint
    ],
)
async def test_get_user_invalid_id(client, raw: str) -> None:
    resp = await client.get(f"/api/users/{raw}")
    assert resp.status == 400
    assert await resp.json() == {"error": "invalid id"}


async def test_list_users_defaults(client) -> None:
    resp = await client.get("/api/users")
    assert resp.status == 200
    body = await resp.json()
    assert list(body) == ["items", "total", "limit", "offset"]
    assert [u["id"] for u in body["items"]] == [1, 2, 3]
    assert body["items"][0] == ALICE_JSON
    assert (body["total"], body["limit"], body["offset"]) == (3, 20, 0)


async def test_list_users_filters_and_pages(client) -> None:
    body = await (await client.get("/api/users?active=true&limit=1&offset=1")).json()
    assert [u["id"] for u in body["items"]] == [2]
    assert (body["total"], body["limit"], body["offset"]) == (2, 1, 1)
    inactive = await (await client.get("/api/users?active=false")).json()
    assert [u["id"] for u in inactive["items"]] == [3]
    assert inactive["total"] == 1


async def test_list_users_offset_past_the_end(client) -> None:
    body = await (await client.get("/api/users?offset=10")).json()
    assert body["items"] == []
    assert body["total"] == 3


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ("active=yes", "invalid active: must be true or false"),
        ("active=True", "invalid active: must be true or false"),
        ("limit=0", "invalid limit: must be an integer from 1 to 100"),
        ("limit=101", "invalid limit: must be an integer from 1 to 100"),
        ("limit=ten", "invalid limit: must be an integer from 1 to 100"),
        ("offset=-1", "invalid offset: must be an integer from 0 to 1000000"),
        ("offset=1000001", "invalid offset: must be an integer from 0 to 1000000"),
        # active is checked before limit, limit before offset.
        ("active=x&limit=0&offset=-1", "invalid active: must be true or false"),
        ("limit=0&offset=-1", "invalid limit: must be an integer from 1 to 100"),
    ],
)
async def test_list_users_invalid_query(client, query: str, error: str) -> None:
    resp = await client.get(f"/api/users?{query}")
    assert resp.status == 400
    assert await resp.json() == {"error": error}
