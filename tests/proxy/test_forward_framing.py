"""Message framing through the proxy (pitfalls checklist §1: 4-5, 8-10).

Smuggling attempts are sent as raw bytes with a pipelined `GET /smuggled`
behind them: the proxy must answer 400 and close, and the upstream must never
see the smuggled request nor an ambiguous one.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from tests.proxy import forward_support
from tests.proxy.forward_support import RawClient, request

if TYPE_CHECKING:
    from tests.proxy.echo_upstream import EchoUpstream

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: proxy.test\r\n\r\n"

# The shared fixtures of the forwarding tests.
proxy_port = forward_support.proxy_port
raw = forward_support.raw
upstream = forward_support.upstream


@pytest.mark.parametrize(
    "attack",
    [
        # CL.TE: both framings at once.
        (
            b"POST /echo HTTP/1.1\r\nHost: proxy.test\r\nContent-Length: 6\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        ),
        # TE.CL in the other order.
        (
            b"POST /echo HTTP/1.1\r\nHost: proxy.test\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Length: 3\r\n\r\n0\r\n\r\n"
        ),
        # Two different Content-Length values.
        b"POST /echo HTTP/1.1\r\nHost: proxy.test\r\nContent-Length: 0\r\nContent-Length: 5\r\n\r\n",
        # Transfer-Encoding not ending in chunked.
        b"POST /echo HTTP/1.1\r\nHost: proxy.test\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
        # Obfuscated Transfer-Encoding: whitespace before the colon.
        b"POST /echo HTTP/1.1\r\nHost: proxy.test\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        # Obfuscated Transfer-Encoding: obs-fold continuation line.
        b"POST /echo HTTP/1.1\r\nHost: proxy.test\r\nTransfer-Encoding: x\r\n chunked\r\n\r\n0\r\n\r\n",
        # Obfuscated value.
        b"POST /echo HTTP/1.1\r\nHost: proxy.test\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        # Bare LF line ends.
        b"POST /echo HTTP/1.1\nHost: proxy.test\nContent-Length: 0\n\n",
        # Chunk size with a bare-LF chunk extension.
        (
            b"POST /echo HTTP/1.1\r\nHost: proxy.test\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5;ext\nhello\r\n0\r\n\r\n"
        ),
        # Two Host headers.
        b"GET /echo HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
        # HTTP/1.1 without Host.
        b"GET /echo HTTP/1.1\r\nX-A: 1\r\n\r\n",
        # Negative Content-Length.
        b"POST /echo HTTP/1.1\r\nHost: proxy.test\r\nContent-Length: -1\r\n\r\n",
    ],
    ids=[
        "cl-te",
        "te-cl",
        "double-cl",
        "te-not-last-chunked",
        "te-space-colon",
        "te-obs-fold",
        "te-xchunked",
        "bare-lf",
        "chunk-ext-bare-lf",
        "double-host",
        "no-host",
        "negative-cl",
    ],
)
async def test_ambiguous_framing_is_rejected_never_forwarded(
    raw: RawClient, upstream: EchoUpstream, attack: bytes
) -> None:
    await raw.send(attack + SMUGGLED)
    response = await raw.read_response()
    assert response.status == 400
    assert json.loads(response.body)["error"] == "bad request"
    rest = await raw.rest_until_close()
    # Closed, and the smuggled request got no answer of its own.
    assert rest is not None
    assert b"HTTP/1.1 200" not in rest
    targets = [r.target for r in upstream.received]
    assert b"/smuggled" not in targets
    # Nothing ambiguous reached the upstream either.
    assert all(not (r.header("Content-Length") and r.chunked) for r in upstream.received)


async def test_chunked_request_is_reframed_not_passed_raw(
    raw: RawClient, upstream: EchoUpstream
) -> None:
    body = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    await raw.send(request("POST", "/echo", headers=[("Transfer-Encoding", "chunked")]) + body)
    response = await raw.read_response()
    echoed = json.loads(response.body)
    assert echoed["body_len"] == 11
    seen = upstream.received[-1]
    assert seen.header("Content-Length") is None
    assert seen.all("Transfer-Encoding") == ["chunked"]


async def test_pipelined_requests_are_answered_in_order(
    raw: RawClient, upstream: EchoUpstream
) -> None:
    await raw.send(
        request("GET", "/echo?1") + request("GET", "/echo?2") + request("GET", "/echo?3")
    )
    lines = [json.loads((await raw.read_response()).body)["request_line"] for _ in range(3)]
    assert lines == [f"GET /echo?{i} HTTP/1.1" for i in (1, 2, 3)]


async def test_head_keeps_content_length_sends_no_body_and_connection_is_reusable(
    raw: RawClient,
) -> None:
    size = 10 * 1024 * 1024
    await raw.send(request("HEAD", f"/big?size={size}"))
    response = await raw.read_response(head=True)
    assert response.status == 200
    assert response.header("Content-Length") == str(size)
    await raw.send(request("GET", "/echo"))
    # If the proxy had sent body bytes after the HEAD answer, this would not parse.
    follow = await raw.read_response()
    assert follow.status == 200
    assert json.loads(follow.body)["request_line"] == "GET /echo HTTP/1.1"


@pytest.mark.parametrize("status", [204, 304])
async def test_bodiless_statuses_are_clean_and_the_connection_is_reusable(
    raw: RawClient, status: int
) -> None:
    # The upstream's 304 carries a stray Transfer-Encoding: chunked.
    await raw.send(request("GET", f"/status/{status}"))
    response = await raw.read_response()
    assert response.status == status
    assert response.header("Transfer-Encoding") is None
    assert response.header("ETag") == '"v1"'
    await raw.send(request("GET", "/echo"))
    assert (await raw.read_response()).status == 200


async def test_informational_103_is_not_mistaken_for_the_answer(raw: RawClient) -> None:
    await raw.send(request("GET", "/early-hints"))
    response = await raw.read_response()
    assert response.status == 200
    assert response.body == b"hinted"


async def test_expect_100_continue_is_answered_and_not_forwarded(
    raw: RawClient, upstream: EchoUpstream
) -> None:
    body = b"z" * (1024 * 1024)
    head = request(
        "PUT",
        "/echo",
        headers=[("Expect", "100-continue"), ("Content-Length", str(len(body)))],
    )
    await raw.send(head)
    status, _, _ = await raw.read_head()
    assert status == 100
    await raw.send(body)
    response = await raw.read_response()
    assert response.status == 200
    assert json.loads(response.body)["body_len"] == len(body)
    assert upstream.received[-1].header("Expect") is None


async def test_http10_client_gets_a_close_delimited_or_sized_answer(raw: RawClient) -> None:
    await raw.send(b"GET /chunked?size=1000 HTTP/1.0\r\nHost: proxy.test\r\n\r\n")
    status, _, headers = await raw.read_head()
    assert status == 200
    names = {k.lower() for k, _ in headers}
    # No chunked encoding for an HTTP/1.0 client: the body ends at close.
    assert "transfer-encoding" not in names
    body = await raw.reader.read()
    assert len(body) == 1000
