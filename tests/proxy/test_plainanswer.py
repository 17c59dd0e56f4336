"""The fast lane's plain-answer reader never reads a message differently from llhttp.

`plain_answer` may refuse anything (the caller then uses aiohttp's parser
and `client_head` on the same bytes), but what it accepts must be exactly
what aiohttp's own C parser makes of those bytes (code, body length,
keep-alive), and its client head must be byte for byte what `client_head`
builds from that parse. Hand-written cases cover each refusal; a seeded
mutation run compares the two on thousands of near-miss heads.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from aiohttp.http_parser import HttpResponseParser

from proxy.core.headers import client_head
from proxy.fastlane.plainanswer import PlainAnswer, plain_answer

LIMITS: dict[str, int] = {"max_line_size": 8190, "max_field_size": 8190, "max_headers": 32}
MAX_HEAD = 6 * LIMITS["max_headers"] + 200
REQUEST_ID = b"rid-1"
DATE = b"Thu, 26 Nov 2026 19:40:00 GMT"

NGINX = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Thu, 26 Nov 2026 19:40:00 GMT\r\n"
    b"Content-Type: application/octet-stream\r\nContent-Length: 5\r\n"
    b'Connection: keep-alive\r\nETag: "6a1b2c3d-c8"\r\nAccept-Ranges: bytes\r\n\r\nhello'
)


class _Reading:
    """The flow-control hooks aiohttp's parser calls on its protocol."""

    def pause_reading(self) -> None:
        """Nothing to pause: the bytes are all in memory."""

    def resume_reading(self, resume_parser: bool = True) -> None:
        """Nothing to resume."""


def _llhttp(data: bytes) -> tuple[Any, bytes] | None:
    """(message, body) as aiohttp's C parser reads one answer, or None if it refuses or waits."""
    loop = asyncio.new_event_loop()
    try:
        parser = HttpResponseParser(
            _Reading(),  # type: ignore[arg-type]
            loop,
            1 << 16,
            response_with_body=True,
            read_until_eof=True,
            auto_decompress=False,
            max_line_size=LIMITS["max_line_size"],
            max_field_size=LIMITS["max_field_size"],
            max_headers=LIMITS["max_headers"],
        )
        try:
            messages, _, _ = parser.feed_data(data)
        except Exception:
            return None
        if not messages:
            return None
        message, payload = messages[0]
        return message, b"".join(payload._buffer)
    finally:
        loop.close()


def _read(data: bytes) -> PlainAnswer | None:
    return plain_answer(data, request_id=REQUEST_ID, date=DATE, max_head=MAX_HEAD)


def _assert_same(data: bytes, answer: PlainAnswer) -> None:
    # Bytes past the announced length would be the next answer (the caller
    # never relays those through the plain path).
    data = data[: answer.body_start + answer.length]
    parsed = _llhttp(data)
    assert parsed is not None, f"llhttp refuses what the plain reader took: {data!r}"
    message, body = parsed
    assert message.code == answer.code
    assert message.should_close == answer.close
    assert not message.chunked
    assert int(message.headers["Content-Length"]) == answer.length
    assert data[answer.body_start : answer.body_start + answer.length] == body[: answer.length]
    raw = message.raw_headers
    expected, _ = client_head(
        message.code,
        message.reason.encode("utf-8", "surrogateescape"),
        raw,
        [name.lower() for name, _ in raw],
        method="GET",
        request_id=REQUEST_ID,
        date=DATE,
    )
    assert answer.head == expected


def test_a_typical_nginx_answer_is_read_like_llhttp() -> None:
    answer = _read(NGINX)
    assert answer is not None
    assert (answer.code, answer.length, answer.close) == (200, 5, False)
    assert answer.head == (
        b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Thu, 26 Nov 2026 19:40:00 GMT\r\n"
        b"Content-Type: application/octet-stream\r\nContent-Length: 5\r\n"
        b'ETag: "6a1b2c3d-c8"\r\nAccept-Ranges: bytes\r\nX-Request-ID: rid-1\r\n\r\n'
    )
    assert NGINX[answer.body_start :] == b"hello"
    _assert_same(NGINX, answer)


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
        (
            b"HTTP/1.1 200 OK\r\nX-Request-ID: theirs\r\nA: 1\r\nx-request-id: again\r\n"
            b"Content-Length: 2\r\n\r\nhi"
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nKeep-Alive: timeout=5\r\nTE: x\r\n"
            b"Trailer: y\r\nUpgrade: h2c\r\n\r\nhi"
        ),
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Te: kept\r\nDates: kept\r\n\r\nhi",
        b"HTTP/1.1 200 \r\nContent-Length: 2\r\n\r\nhi",
        b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\nContent-Length: 2\r\n\r\nhi",
        b"HTTP/1.1 200 OK\r\nX-Tab: a\tb\r\nContent-Length: 2\r\n\r\nhi",
        b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 2\r\n\r\nhi",
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi",
        b"HTTP/1.1 200 OK\r\nConnection: Keep-Alive, CLOSE\r\nContent-Length: 2\r\n\r\nhi",
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi",
        b"HTTP/1.1 200 OK\r\nContent-Length: 007\r\n\r\nhi",  # body still to come
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nh",  # body still to come
    ],
)
def test_accepted_answers_read_as_llhttp_reads_them(data: bytes) -> None:
    answer = _read(data)
    assert answer is not None
    _assert_same(data, answer)


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n",  # head not complete
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi",
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nhi",  # no space after the code
        b"HTTP/1.1 200 OK \r\nContent-Length: 2\r\n\r\nhi",  # trailing space in the reason
        b"HTTP/1.1 200 OK\r\n\r\n",  # no length: read until close
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nhi",
        b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nhi",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nhi",
        # llhttp reads Proxy-Connection as Connection: `close` ends the connection.
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nProxy-Connection: close\r\n\r\nhi",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nProxy-Connection: keep-alive\r\n\r\nhi",
        b"HTTP/1.1 200 OK\r\nContent-Length: 9999999999999999\r\n\r\nhi",
        b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nhi",  # space before the colon
        b"HTTP/1.1 200 OK\r\nX: a\r\n folded\r\nContent-Length: 2\r\n\r\nhi",  # obs-fold
        b"HTTP/1.1 200 OK\r\nX: a\x00b\r\nContent-Length: 2\r\n\r\nhi",
        b"HTTP/1.1 200 OK\r\nX: a\rb\r\nContent-Length: 2\r\n\r\nhi",
        b"HTTP/1.1 200 OK\r\nX: a\nContent-Length: 2\r\n\r\nhi",  # bare LF
        b"HTTP/1.1 200 OK\r\nX: caf\xc3\xa9\r\nContent-Length: 2\r\n\r\nhi",  # obs-text
        b"HTTP/1.1 200 OK\r\nX: trailing \r\nContent-Length: 2\r\n\r\nhi",
        b"HTTP/1.1 200 OK\r\nX(y): 1\r\nContent-Length: 2\r\n\r\nhi",  # not a token
        b"HTTP/1.1 200 OK\r\n: novalue\r\nContent-Length: 2\r\n\r\nhi",
        b"HTTP/1.1 600 Odd\r\nContent-Length: 2\r\n\r\nhi",
        # Legal, but not normalised already: the general path re-forms these.
        b"HTTP/1.1 200 OK\r\nX-Empty:\r\nContent-Length: 2\r\n\r\nhi",
        b"HTTP/1.1 200 OK\r\nX-Tab:\tv\r\nContent-Length: 2\r\n\r\nhi",
        b"HTTP/1.1 200 OK\r\ncontent-length:2\r\n\r\nhi",
        b"HTTP/1.1 200 OK\r\nX:  two-spaces\r\nContent-Length: 2\r\n\r\nhi",
        # A Connection token naming another header: the general rules drop it.
        b"HTTP/1.1 200 OK\r\nConnection: closed\r\nContent-Length: 2\r\n\r\nhi",
        b"HTTP/1.1 200 OK\r\nConnection: X-Secret\r\nX-Secret: 1\r\nContent-Length: 2\r\n\r\nhi",
        b"http/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi",
    ],
)
def test_anything_unusual_is_left_to_aiohttps_parser(data: bytes) -> None:
    assert _read(data) is None


def test_a_head_longer_than_the_limit_is_left_to_the_parser() -> None:
    filler = b"X-Fill: " + b"v" * MAX_HEAD + b"\r\n"
    assert _read(b"HTTP/1.1 200 OK\r\n" + filler + b"Content-Length: 0\r\n\r\n") is None


_ALPHABET = (b"\r", b"\n", b" ", b"\t", b":", b",", b"\x00", b"\x7f", b"\xff", b"0", b"9", b"a")


def _mutate(rng: random.Random, data: bytes) -> bytes:
    """`data` with one to three bytes replaced, inserted or deleted in its head."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(len(out) - 5)
        action = rng.randrange(3)
        if action == 0:
            out[at : at + 1] = rng.choice(_ALPHABET)
        elif action == 1:
            out[at:at] = rng.choice(_ALPHABET)
        else:
            del out[at]
    return bytes(out)


# A head with every header the rules treat specially, to mutate too.
SPECIALS = (
    b"HTTP/1.1 200 OK\r\nX-Request-ID: theirs\r\nKeep-Alive: timeout=5\r\n"
    b"Proxy-Connection: close\r\nConnection: keep-alive\r\nTE: trailers\r\n"
    b"Date: Thu, 26 Nov 2026 19:40:00 GMT\r\nContent-Length: 5\r\n\r\nhello"
)


@pytest.mark.parametrize("base", [NGINX, SPECIALS], ids=["nginx", "specials"])
def test_mutated_heads_are_refused_or_read_exactly_as_llhttp_reads_them(base: bytes) -> None:
    rng = random.Random(20261126)
    accepted = 0
    for _ in range(4000):
        data = _mutate(rng, base)
        answer = _read(data)
        if answer is not None:
            accepted += 1
            _assert_same(data, answer)
    # The run must exercise both outcomes, or it proves nothing.
    assert 100 < accepted < 3900
