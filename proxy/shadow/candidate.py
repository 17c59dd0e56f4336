"""Send one copy of a request to a side and read its answer, capped.

The copies have their own connection pools and limits, never the primary's:
a slow or failing candidate can only use up its own connections. A side is
reached through the proxy's thin HTTP/1.1 client (`proxy.upstream.client`):
the copy's head is written as bytes built here, the answer read by aiohttp's
own parser, on keep-alive connections, and aiohttp's `ClientSession` (a
request and response object, URL, multidicts and timers per request: most of
a copy's CPU) is not involved. Nothing is decompressed (the engine decodes
both sides the same way), no header is added but a missing `Host`, and no
cookie is kept.

The in-process `new` app is reached the same way over a Unix socket of its
own (`proxy.serving.shadowsite`), so each copy is a request of its own with
its own response writer.

Every failure is an `aiohttp.ClientError`, an `OSError` or a `TimeoutError`
(what the shadow runtime catches); a copy cancelled mid-answer (the route's
shadow timeout) closes its connection instead of pooling it half-read.
"""

from __future__ import annotations

import logging
import re
import ssl
from collections.abc import Mapping
from time import perf_counter
from typing import TYPE_CHECKING, Final

import aiohttp
from aiohttp.http_exceptions import HttpProcessingError
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from proxy.shadow.model import Answer
from proxy.upstream.client import ConnectionPool, UpstreamUnreachable
from proxy.upstream.limits import ClientLimits

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["CandidateClients", "Endpoint", "request_head"]

logger = logging.getLogger(__name__)

# How long an idle connection to a side is kept (aiohttp's connector default,
# what the sessions used): a side that closes sooner costs one stale-connection
# retry (`ConnectionPool.request`), never a failed copy.
KEEPALIVE_TIMEOUT: Final = 15.0
# The same response limits as the primary's pools (big cookies pass on both sides).
_LIMITS: Final = ClientLimits()

# RFC 9110 §5.6.2: a method or header name is a token.
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Header names already found to be tokens: the same few dozen names come in
# every copy. Bounded, as the names are the clients' to choose.
_TOKEN_NAMES: Final[set[str]] = set()
_TOKEN_NAMES_MAX: Final = 1024
# What would end or split a header line (NUL: most parsers refuse it).
_BREAKS_LINE: Final = re.compile(r"[\r\n\x00]")
# A request target is one run of visible characters.
_BAD_TARGET: Final = re.compile(r"[\x00-\x20\x7f]")

# Where a side answers: an http(s) base URL, or a Unix socket path and the
# base URL requests on it carry (`unix` is None for a TCP side).
Endpoint = tuple[str, str | None]


def request_head(
    method: str, target: str, headers: Iterable[tuple[str, str]], *, default_host: str
) -> bytes:
    """`METHOD target HTTP/1.1`, the headers in order, then the blank line.

    A header whose name is not a token, or whose value has a CR, LF or NUL,
    is left out (it could not be sent as one header line). `Host:
    default_host` is added when no `Host` is given (HTTP/1.1 requires one).
    Raises aiohttp.InvalidURL for a method or target that cannot go on a
    request line. Text is encoded as UTF-8 with surrogates escaped, so bytes
    the server decoded that way go out as they came.
    """
    if _TOKEN.fullmatch(method) is None or not target or _BAD_TARGET.search(target):
        raise aiohttp.InvalidURL(target, "not a valid request line")
    lines = [method, " ", target, " HTTP/1.1\r\n"]
    has_host = False
    names = _TOKEN_NAMES
    for name, value in headers:
        if name not in names:
            if _TOKEN.fullmatch(name) is None:
                logger.debug("proxy.shadow_header_dropped", extra={"header": name[:64]})
                continue
            if len(names) < _TOKEN_NAMES_MAX:
                names.add(name)
        # isprintable() is False for CR, LF and NUL (and for tab or escaped
        # bytes, which are fine): the search only runs for those.
        if not value.isprintable() and _BREAKS_LINE.search(value):
            logger.debug("proxy.shadow_header_dropped", extra={"header": name[:64]})
            continue
        if not has_host and len(name) == 4 and name.lower() == "host":  # noqa: PLR2004
            has_host = True
        lines += (name, ": ", value, "\r\n")
    if not has_host:
        lines += ("Host: ", default_host, "\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("utf-8", "surrogateescape")


class _Side:
    """A side's pool and what its request heads need."""

    __slots__ = ("host", "pool", "prefix", "url")

    def __init__(self, base: str, limit: int, unix: str | None = None) -> None:
        url = URL(base, encoded=True)
        if url.scheme not in {"http", "https"} or not url.raw_host:
            msg = f"not an http(s) side: {base!r}"
            raise aiohttp.InvalidURL(base, msg)
        self.url = url
        # `Host` for a copy that has none, as aiohttp's client sent it.
        self.host = url.host_port_subcomponent or url.raw_host
        # A base with a path (upstream URLs have none) prefixes every target.
        path = url.raw_path
        self.prefix = "" if path in {"", "/"} else path.rstrip("/")
        self.pool = ConnectionPool(
            host=url.raw_host,
            port=url.port or (443 if url.scheme == "https" else 80),
            ssl=ssl.create_default_context() if url.scheme == "https" else None,
            limit=limit,
            keepalive_timeout=KEEPALIVE_TIMEOUT,
            limits=_LIMITS,
            unix=unix,
        )


class CandidateClients:
    """One pool per endpoint (TCP or Unix socket), each with at most `limit` connections."""

    __slots__ = ("_limit", "_sides")

    def __init__(self, *, limit: int) -> None:
        self._limit = limit
        self._sides: dict[Endpoint, _Side] = {}

    async def fetch(
        self,
        endpoint: Endpoint,
        method: str,
        target: str,
        headers: Mapping[str, str] | tuple[tuple[str, str], ...],
        *,
        max_body: int,
    ) -> Answer:
        """The side's answer to `method target` (a bodiless request).

        A body longer than `max_body` is not read to its end: the answer is
        marked truncated and the connection closed. Failures raise
        aiohttp.ClientError (OSError for some), TimeoutError or aiohttp.InvalidURL.
        No timeout of its own: the caller bounds the whole copy.
        """
        side = self._sides.get(endpoint)
        if side is None:
            base, unix = endpoint
            side = self._sides[endpoint] = _Side(base, self._limit, unix)
            logger.debug("proxy.shadow_pool", extra={"endpoint": base})
        pairs = headers.items() if isinstance(headers, Mapping) else headers
        head = request_head(method, side.prefix + target, pairs, default_host=side.host)
        start = perf_counter()
        try:
            exchange = await side.pool.request(
                method, head, None, chunked=False, connect_timeout=None, read_timeout=None
            )
        except UpstreamUnreachable as exc:
            raise aiohttp.ClientConnectionError(str(exc)) from exc
        except HttpProcessingError as exc:
            raise _broken_head(exc, side.url, method, target, pairs) from exc
        complete = False
        try:
            message, content = exchange.message, exchange.content
            chunks: list[bytes] = []
            size = 0
            truncated = False
            try:
                while chunk := await content.readany():
                    size += len(chunk)
                    if size > max_body:
                        truncated = True
                        break
                    chunks.append(chunk)
            except HttpProcessingError as exc:
                msg = f"broken answer body: {exc.message}"
                raise aiohttp.ClientPayloadError(msg) from exc
            complete = not truncated
            return Answer(
                status=message.code,
                headers=tuple(message.headers.items()),
                body=b"" if truncated else b"".join(chunks),
                truncated=truncated,
                latency=perf_counter() - start,
            )
        finally:
            # Anything but a whole answer (truncated, failed, cancelled by the
            # route's timeout) closes the connection: never pooled half-read.
            if complete:
                exchange.finish()
            else:
                exchange.release(reuse=False)

    async def close(self) -> None:
        """Close every pool and session (a copy in flight closes its connection when done)."""
        sides, self._sides = self._sides, {}
        for side in sides.values():
            await side.pool.close()


def _broken_head(
    exc: HttpProcessingError,
    url: URL,
    method: str,
    target: str,
    headers: Iterable[tuple[str, str]],
) -> aiohttp.ClientResponseError:
    # What aiohttp's ClientSession raises for an answer head it cannot parse.
    real = URL(str(url).rstrip("/") + target, encoded=True)
    info = aiohttp.RequestInfo(real, method, CIMultiDictProxy(CIMultiDict(headers)), real)
    return aiohttp.ClientResponseError(info, (), status=exc.code, message=exc.message)
