"""Send one copy of a request to a side and read its answer, capped.

The copies have their own sessions and connection limits, never the
primary's pools: a slow or failing candidate can only use up its own
connections. Sessions do not decompress (the engine decodes both sides the
same way), add no headers of their own and keep no cookies. The in-process
`new` app is reached over a Unix socket of its own (`proxy.serving.shadowsite`),
so each copy is a request of its own with its own response writer.
"""

from __future__ import annotations

import logging
from time import perf_counter
from typing import TYPE_CHECKING, Final

import aiohttp
from yarl import URL

from proxy.shadow.model import Answer

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["CandidateClients", "Endpoint"]

logger = logging.getLogger(__name__)

_READ_SIZE: Final = 64 * 1024
# aiohttp's client adds these unless told not to; the client's own travel in the copy.
_SKIP_AUTO_HEADERS: Final = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")

# Where a side answers: an http(s) base URL, or a Unix socket path and the
# base URL requests on it carry (`unix` is None for a TCP side).
Endpoint = tuple[str, str | None]


class CandidateClients:
    """One session per endpoint, each with at most `limit` connections."""

    __slots__ = ("_limit", "_sessions")

    def __init__(self, *, limit: int) -> None:
        self._limit = limit
        self._sessions: dict[Endpoint, aiohttp.ClientSession] = {}

    async def fetch(
        self,
        endpoint: Endpoint,
        method: str,
        target: str,
        headers: Mapping[str, str] | tuple[tuple[str, str], ...],
        *,
        max_body: int,
    ) -> Answer:
        """The side's answer to `method target` (aiohttp errors propagate).

        A body longer than `max_body` is not read to its end: the answer is
        marked truncated and the connection closed.
        """
        session = self._session(endpoint)
        start = perf_counter()
        url = URL(endpoint[0] + target, encoded=True)
        async with session.request(
            method,
            url,
            headers=headers,
            allow_redirects=False,
            skip_auto_headers=_SKIP_AUTO_HEADERS,
        ) as response:
            chunks: list[bytes] = []
            size = 0
            truncated = False
            while chunk := await response.content.read(_READ_SIZE):
                size += len(chunk)
                if size > max_body:
                    truncated = True
                    response.close()
                    break
                chunks.append(chunk)
            return Answer(
                status=response.status,
                headers=tuple(response.headers.items()),
                body=b"" if truncated else b"".join(chunks),
                truncated=truncated,
                latency=perf_counter() - start,
            )

    def _session(self, endpoint: Endpoint) -> aiohttp.ClientSession:
        session = self._sessions.get(endpoint)
        if session is None or session.closed:
            base, unix = endpoint
            connector: aiohttp.BaseConnector
            if unix is None:
                connector = aiohttp.TCPConnector(limit=self._limit, limit_per_host=self._limit)
            else:
                connector = aiohttp.UnixConnector(path=unix, limit=self._limit)
            session = self._sessions[endpoint] = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                # The route's shadow timeout bounds the whole copy (the runtime).
                timeout=aiohttp.ClientTimeout(total=None),
            )
            logger.debug("proxy.shadow_session", extra={"endpoint": base, "unix": unix})
        return session

    async def close(self) -> None:
        sessions, self._sessions = self._sessions, {}
        for session in sessions.values():
            await session.close()
