"""Which request methods the proxy forwards (docs/proxy.md, "Refused").

aiohttp's C parser (llhttp) knows a fixed set of methods: the RFC 9110 ones,
WebDAV and CalDAV (PROPFIND, REPORT, MKCALENDAR...), PURGE, SEARCH, QUERY,
M-SEARCH, NOTIFY, SUBSCRIBE, LINK... All of those pass through unchanged
(CONNECT and TRACE excepted: 405). Any other token (BREW, X-CUSTOM, a
lower-case method) is rejected by the parser before the proxy sees it: a
400 and a closed connection, a known limitation.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from tests.proxy import forward_support
from tests.proxy.forward_support import RawClient, request

if TYPE_CHECKING:
    from tests.proxy.echo_upstream import EchoUpstream

proxy_port = forward_support.proxy_port
raw = forward_support.raw
upstream = forward_support.upstream

PASSED = [
    "PROPFIND",
    "PROPPATCH",
    "MKCOL",
    "COPY",
    "MOVE",
    "LOCK",
    "UNLOCK",
    "REPORT",
    "MKCALENDAR",
    "PURGE",
    "SEARCH",
    "QUERY",
    "M-SEARCH",
    "NOTIFY",
    "SUBSCRIBE",
    "UNSUBSCRIBE",
    "LINK",
    "UNLINK",
]
REJECTED = ["BREW", "X-CUSTOM", "FOO", "get", "DESCRIBE", "PRI"]


@pytest.mark.parametrize("method", PASSED)
async def test_methods_the_parser_knows_are_forwarded_unchanged(
    raw: RawClient, upstream: EchoUpstream, method: str
) -> None:
    await raw.send(request(method, "/echo?m=1", body=b"<x/>"))
    response = await raw.read_response()
    assert response.status == 200
    assert json.loads(response.body)["request_line"] == f"{method} /echo?m=1 HTTP/1.1"
    assert upstream.received[-1].body_len == 4


@pytest.mark.parametrize("method", REJECTED)
async def test_methods_the_parser_does_not_know_get_400_and_are_not_forwarded(
    raw: RawClient, upstream: EchoUpstream, method: str
) -> None:
    await raw.send(request(method, "/echo"))
    response = await raw.read_response()
    assert response.status == 400
    assert json.loads(response.body)["error"] == "bad request"
    assert await raw.rest_until_close() == b""
    assert upstream.received == []
