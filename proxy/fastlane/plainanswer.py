"""Plain answers: the fast lane's common case, read and re-headed in bulk.

Most answers a proxy relays look alike: `HTTP/1.1 200 OK`, a handful of
headers, one `Content-Length`, and (for a small body) the whole message in
one read. For those, aiohttp's client protocol costs more than the relay
itself: a new llhttp parser per request, a header multidict, a
`RawResponseMessage`, a `StreamReader` fed and ended through Python
callbacks, then a Python loop over the headers for the client's head (about
110k CPU instructions, of about 240k for the whole relay of a small request
before this module; about 55k here).

`plain_answer` accepts only a strict subset of RFC 9112 that every
conforming parser, llhttp included, reads the same way, and checks it with
one regular expression: an HTTP/1.1 status line with a 2xx-5xx code other
than 204 and 304; header lines of a token, a colon, one space and a value of
visible ASCII (tabs and spaces inside) with no trailing whitespace; exactly
one all-digit `Content-Length`; no `Transfer-Encoding` and no
`Proxy-Connection` (llhttp reads it as `Connection`); a `Connection` that says
only `keep-alive` and/or `close`; the head within the configured
limits. Since such a head needs no normalising, the client's head is the
upstream's bytes with the hop-by-hop lines cut out, `X-Request-ID` put in and
`Date` added when missing: the rules of `proxy.core.headers.client_head`, applied
by slicing instead of per header.

Anything else, however legal, gives None, and the caller hands the same
bytes to aiohttp's parser and `client_head` as before. So this reader can be
stricter than llhttp but never reads a message differently, and its head is
byte for byte `client_head`'s (tests/proxy/test_plainanswer.py checks both
against aiohttp's parser).
"""

from __future__ import annotations

import re
from typing import Final, NamedTuple

__all__ = ["PlainAnswer", "plain_answer"]

# The whole head, CRLF after the last header line included. A reason or a
# value is runs of visible characters with single runs of spaces and tabs
# between them, so it starts and ends with a visible one. The runs are
# possessive and cannot overlap, and the repeated groups are atomic, so the
# match never backtracks and is linear in the head's length. Not `*+`/`++` on
# a group: before 3.11.5 (gh-106052) such a repeat keeps a half-matched last
# iteration, and the value's trailing whitespace would pass.
_HEAD: Final = re.compile(
    rb"HTTP/1\.1 [2-5][0-9][0-9] (?:[\x21-\x7e]++(?>(?:[\t ]++[\x21-\x7e]++)*))?\r\n"
    rb"(?>(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]++: [\x21-\x7e]++(?>(?:[\t ]++[\x21-\x7e]++)*)\r\n)+)"
)
# The header lines the rules look at, found in the lower-cased head. The
# values cannot hold CR or LF, so CRLF always starts a line.
_SPECIAL: Final = re.compile(
    rb"\r\n(content-length|date|connection|x-request-id|transfer-encoding|keep-alive"
    rb"|proxy-connection|proxy-authenticate|proxy-authorization|te|trailer|upgrade): "
)
_NO_BODY: Final = frozenset({b"204", b"304"})
# More digits than any body a proxy relays; keeps int() cheap and bounded.
_MAX_LENGTH_DIGITS: Final = 15
_KEEP_ALIVE: Final = b"keep-alive"
_CLOSE: Final = b"close"
_COMMON: Final = frozenset({b"content-length", b"date", b"connection"})
# llhttp reads Proxy-Connection as Connection (`close` ends the connection):
# like Transfer-Encoding, a head with it goes to the parser.
_PARSER_DECIDES: Final = frozenset({b"transfer-encoding", b"proxy-connection"})
# Builds the named tuple in C: its generated __new__ is a Python call.
_new_answer: Final = tuple.__new__


class PlainAnswer(NamedTuple):
    """A plain answer read from the bytes of one upstream read.

    `head` is the client's head, ready to write. The body starts at
    `body_start` in those bytes and is `length` long; `close` says the
    upstream will close the connection after it.
    """

    head: bytes
    code: int
    length: int
    close: bool
    body_start: int


def plain_answer(
    data: bytes, *, request_id: bytes, date: bytes, max_head: int
) -> PlainAnswer | None:
    """The answer at the start of `data` when it is plain, with its client head; None otherwise.

    None also when the head is not complete in `data` or is longer than
    `max_head`: the caller's parser then reads it, however it arrives.
    """
    end = data.find(b"\r\n\r\n", 0, max_head)
    if end < 0 or data[9:12] in _NO_BODY:
        return None
    head_end = end + 2
    if _HEAD.fullmatch(data, 0, head_end) is None:
        return None
    head = data[:head_end]
    lower = head.lower()
    found = _SPECIAL.findall(lower)
    if _COMMON.issuperset(found) and found.count(b"content-length") == 1:
        # What nginx and aiohttp send: a length, maybe a Date and `Connection:
        # keep-alive`, nothing else the rules touch. One `find` per line.
        read = _common(head, lower, found, request_id, date)
    else:
        read = _general(head, lower, request_id, date)
    if read is None:
        return None
    client_head, length, close = read
    return _new_answer(PlainAnswer, (client_head, int(data[9:12]), length, close, end + 4))


def _length(value: bytes) -> int:
    """A `Content-Length` value, or -1 when it is not plain digits."""
    if not value.isdigit() or len(value) > _MAX_LENGTH_DIGITS:
        return -1
    return int(value)


def _common(
    head: bytes, lower: bytes, found: list[bytes], request_id: bytes, date: bytes
) -> tuple[bytes, int, bool] | None:
    """`_general` for a head whose special lines are a length and at most a Date and a Connection."""
    at = lower.find(b"\r\ncontent-length: ") + 18
    length = _length(head[at : head.find(b"\r\n", at)])
    if length < 0:
        return None
    close = False
    if b"connection" in found:
        if found.count(b"connection") > 1:
            return None
        line = lower.find(b"\r\nconnection: ") + 2
        value_end = head.find(b"\r\n", line)
        value = lower[line + 12 : value_end]
        if value == _CLOSE:
            close = True
        elif value != _KEEP_ALIVE:
            return _general(head, lower, request_id, date)
        head = head[:line] + head[value_end + 2 :]
    date_line = b"" if b"date" in found else b"Date: %b\r\n" % date
    client_head = b"%bX-Request-ID: %b\r\n%b\r\n" % (head, request_id, date_line)
    return client_head, length, close


def _general(  # noqa: C901, PLR0912 - one pass, one refusal each
    head: bytes, lower: bytes, request_id: bytes, date: bytes
) -> tuple[bytes, int, bool] | None:
    """The client head, body length and `close` of a validated plain head; None if not plain."""
    pieces: list[bytes] = []
    start = 0  # the head's bytes from here on are still to be copied
    length = -1
    close = has_id = has_date = False
    for special in _SPECIAL.finditer(lower):
        name = special[1]
        line = special.start() + 2
        value_at = special.end()
        value_end = head.find(b"\r\n", value_at)
        if name == b"content-length":
            if length >= 0:
                return None
            length = _length(head[value_at:value_end])
            if length < 0:
                return None
            continue
        if name == b"date":
            has_date = True
            continue
        if name in _PARSER_DECIDES:
            return None
        if name == b"connection":
            for token in lower[value_at:value_end].split(b","):
                token = token.strip(b" \t")  # noqa: PLW2901 - the same token, trimmed
                if token == _CLOSE:
                    close = True
                elif token != _KEEP_ALIVE:
                    return None  # it names a header to drop: the general rules do that
        # Cut this line; the first X-Request-ID comes back with our value.
        pieces.append(head[start:line])
        start = value_end + 2
        if name == b"x-request-id" and not has_id:
            has_id = True
            pieces.append(head[line:value_at] + request_id + b"\r\n")
    if length < 0:
        return None
    pieces.append(head[start:] if start else head)
    if not has_id:
        pieces.append(b"X-Request-ID: %b\r\n" % request_id)
    if not has_date:
        pieces.append(b"Date: %b\r\n" % date)
    pieces.append(b"\r\n")
    return b"".join(pieces), length, close
