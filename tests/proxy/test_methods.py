"""Which request methods the proxy forwards (docs/proxy.md, "Refused").

aiohttp's C parser (llhttp) knows a fixed set of methods: the RFC 9110 ones,
WebDAV and CalDAV (PROPFIND, REPORT, MKCALENDAR...), PURGE, SEARCH, QUERY,
M-SEARCH, NOTIFY, SUBSCRIBE, LINK... All of those pass through unchanged
(CONNECT and TRACE excepted: 405). Other methods pass as nginx passes them
when they are capital letters, `_` and `-` (BREW, X-CUSTOM, RTSP's
DESCRIBE): the fast lane hands their connection to aiohttp's pure-Python
parser. A lower-case method, or anything else, is a 400 and a closed
connection.
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
EXTENSION = ["BREW", "X-CUSTOM", "FOO", "DESCRIBE", "A_B", "PRI"]
REJECTED = ["get", "Brew", "X.CUSTOM", "BREW!"]


@pytest.mark.parametrize("method", PASSED)
async def test_methods_the_parser_knows_are_forwarded_unchanged(
    raw: RawClient, upstream: EchoUpstream, method: str
) -> None:
    await raw.send(request(method, "/echo?m=1", body=b"<x/>"))
    response = await raw.read_response()
    assert response.status == 200
    assert json.loads(response.body)["request_line"] == f"{method} /echo?m=1 HTTP/1.1"
    assert upstream.received[-1].body_len == 4


@pytest.mark.parametrize("method", EXTENSION)
async def test_methods_llhttp_does_not_know_are_forwarded_as_nginx_would(
    raw: RawClient, upstream: EchoUpstream, method: str
) -> None:
    # First bodiless, then with a body on the same connection (now aiohttp's).
    await raw.send(request(method, "/echo?m=1"))
    first = await raw.read_response()
    assert first.status == 200
    assert json.loads(first.body)["request_line"] == f"{method} /echo?m=1 HTTP/1.1"
    await raw.send(request(method, "/echo", body=b"<x/>"))
    second = await raw.read_response()
    assert second.status == 200
    assert json.loads(second.body)["request_line"] == f"{method} /echo HTTP/1.1"
    assert [r.body_len for r in upstream.received] == [0, 4]


async def test_an_extension_method_after_lane_requests_on_one_connection(
    raw: RawClient, upstream: EchoUpstream
) -> None:
    await raw.send(request("GET", "/echo"))
    assert (await raw.read_response()).status == 200
    await raw.send(request("BREW", "/pot"))
    response = await raw.read_response()
    assert response.status == 200
    assert json.loads(response.body)["request_line"] == "BREW /pot HTTP/1.1"
    assert [r.target for r in upstream.received] == [b"/echo", b"/pot"]


async def test_the_extension_parser_keeps_the_framing_rules(
    raw: RawClient, upstream: EchoUpstream
) -> None:
    # Content-Length and Transfer-Encoding together: a smuggling attempt.
    await raw.send(
        b"BREW /echo HTTP/1.1\r\nHost: proxy.test\r\nContent-Length: 6\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n"
        b"Host: proxy.test\r\n\r\n"
    )
    response = await raw.read_response()
    assert response.status == 400
    assert await raw.rest_until_close() == b""
    assert upstream.received == []


REFUSED_LINES = {
    "known-method-bad-version": b"GET /echo HTTP/1.2",
    "known-method-no-host-bad-version": b"GET /echo HTTP/9.9",
    "extension-bad-version": b"BREW /echo HTTP/1.2",
    "extension-non-ascii-target": b"BREW /a\xffb HTTP/1.1",
    "extension-non-ascii-query": b"BREW /echo?q=\xff HTTP/1.1",
    "extension-absolute-form": b"BREW http://proxy.test/echo HTTP/1.1",
    "extension-non-ascii-host": b"BREW http://\xff/x HTTP/1.1",
}


@pytest.mark.parametrize("line", REFUSED_LINES.values(), ids=REFUSED_LINES.keys())
async def test_request_lines_llhttp_refuses_stay_refused(
    raw: RawClient, upstream: EchoUpstream, line: bytes
) -> None:
    # What the pure-Python parser would take beyond llhttp: never through it.
    host = b"" if b"no-host" in line or b"9.9" in line else b"Host: proxy.test\r\n"
    await raw.send(line + b"\r\n" + host + b"\r\n")
    response = await raw.read_response()
    assert response.status == 400
    assert await raw.rest_until_close() == b""
    assert upstream.received == []


@pytest.mark.parametrize(
    "line", [b"GET /a\xffb HTTP/1.1", b"GET http://\xff/x HTTP/1.1", b"CONNECT a\xff:80 HTTP/1.1"]
)
async def test_a_connection_on_the_extension_parser_keeps_llhttps_request_line_rules(
    raw: RawClient, upstream: EchoUpstream, line: bytes
) -> None:
    await raw.send(request("BREW", "/pot"))
    assert (await raw.read_response()).status == 200
    await raw.send(line + b"\r\nHost: proxy.test\r\n\r\n")
    response = await raw.read_response()
    assert response.status == 400
    assert await raw.rest_until_close() == b""
    assert [r.target for r in upstream.received] == [b"/pot"]


async def test_the_http2_preface_is_refused(raw: RawClient, upstream: EchoUpstream) -> None:
    await raw.send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    assert (await raw.read_response()).status == 400
    assert await raw.rest_until_close() == b""
    assert upstream.received == []


@pytest.mark.parametrize("method", REJECTED)
async def test_other_methods_get_400_and_are_not_forwarded(
    raw: RawClient, upstream: EchoUpstream, method: str
) -> None:
    await raw.send(request(method, "/echo"))
    response = await raw.read_response()
    assert response.status == 400
    assert json.loads(response.body)["error"] == "bad request"
    assert await raw.rest_until_close() == b""
    assert upstream.received == []
