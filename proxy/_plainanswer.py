"""A strict reader for the plain answers the fast lane relays without aiohttp's parser.

Most answers a proxy relays look alike: `HTTP/1.1 200 OK`, a handful of
headers, one `Content-Length`, and (for a small body) the whole message in
one read. For those, aiohttp's client protocol costs more than the relay
itself: a new llhttp parser per request, a header multidict, a
`RawResponseMessage` and a `StreamReader` fed and ended through Python
callbacks: 11 microseconds to parse a typical nginx answer on a parser that
already exists, where the whole relay of a small request costs 60-150.

`read_plain_answer` accepts only a strict subset of RFC 9112 that every
conforming parser, llhttp included, reads the same way: an HTTP/1.1 status
line with a 2xx-5xx code other than 204 and 304, header lines of a token,
a colon and visible ASCII (no obs-fold, no control bytes, no trailing
whitespace), exactly one all-digit `Content-Length`, no `Transfer-Encoding`,
and a head within the configured limits. Anything else, however legal,
gives None, and the caller hands the same bytes to aiohttp's parser as
before: so this reader can only ever be stricter than llhttp, never read a
message differently (tests/proxy/test_plainanswer.py checks that against
aiohttp's parser).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

__all__ = ["PlainAnswer", "read_plain_answer"]

_STATUS: Final = re.compile(rb"HTTP/1\.1 ([2-5][0-9][0-9]) ([\t\x20-\x7e]*)")
# Header lines, each ending in CRLF. Values are checked for trailing
# whitespace in the loop below rather than here: a pattern that excludes it
# needs backtracking, and this one reads each byte once.
_FIELDS: Final = re.compile(rb"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t\x20-\x7e]*\r\n)*")
_OWS: Final = b" \t"
_NO_BODY: Final = frozenset({204, 304})
# More digits than any body a proxy relays; keeps int() cheap and bounded.
_MAX_LENGTH_DIGITS: Final = 15


@dataclass(frozen=True, slots=True)
class PlainAnswer:
    """The head of one plain answer, as raw bytes.

    `raw` holds (name, value) pairs as sent (value without its surrounding
    whitespace, as llhttp gives it), `names` the same names lower-cased.
    The body starts at `body_start` in the bytes read and is `length` long.
    """

    code: int
    reason: bytes
    raw: tuple[tuple[bytes, bytes], ...]
    names: list[bytes]
    length: int
    close: bool
    body_start: int


def read_plain_answer(  # noqa: C901, PLR0911, PLR0912 - one pass, one reason per refusal
    data: bytes, *, max_line_size: int, max_field_size: int, max_headers: int
) -> PlainAnswer | None:
    """The head at the start of `data` when it is a plain answer; None otherwise.

    None also when the head is not complete in `data`: the caller's parser
    then reads it, however it arrives.
    """
    end = data.find(b"\r\n\r\n", 0, max_line_size + max_headers * (max_field_size + 2) + 4)
    if end < 0:
        return None
    line_end = data.find(b"\r\n", 0, end + 2)
    if line_end > max_line_size or line_end == end:  # no header at all: no length
        return None
    status = _STATUS.fullmatch(data, 0, line_end)
    if status is None:
        return None
    reason = status[2]
    if reason[-1:] in (b" ", b"\t"):
        return None
    code = int(status[1])
    if code in _NO_BODY:
        return None
    if _FIELDS.fullmatch(data, line_end + 2, end + 2) is None:
        return None
    lines = data[line_end + 2 : end].split(b"\r\n")
    if len(lines) > max_headers:
        return None
    raw: list[tuple[bytes, bytes]] = []
    names: list[bytes] = []
    length: int | None = None
    close = False
    for line in lines:
        if len(line) > max_field_size or line[-1:] in (b" ", b"\t"):
            return None
        name, _, value = line.partition(b":")
        value = value.lstrip(_OWS)
        lname = name.lower()
        if lname == b"content-length":
            if length is not None or not value.isdigit() or len(value) > _MAX_LENGTH_DIGITS:
                return None
            length = int(value)
        elif lname == b"transfer-encoding":
            return None
        elif lname == b"connection":
            lowered = value.lower()
            if b"close" in lowered:
                close = close or any(t.strip(_OWS) == b"close" for t in lowered.split(b","))
        raw.append((name, value))
        names.append(lname)
    if length is None:
        return None
    return PlainAnswer(
        code=code,
        reason=reason,
        raw=tuple(raw),
        names=names,
        length=length,
        close=close,
        body_start=end + 4,
    )
