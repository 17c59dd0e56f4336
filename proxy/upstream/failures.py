"""The one map from an upstream failure to the proxy's answer: 504 or 502.

Both request paths (the fast lane and aiohttp's web path) and the WebSocket
handshake use it, so a failure reads the same in the answer, the access log
and `club_proxy_upstream_errors_total` whichever path met it.
"""

from __future__ import annotations

import logging
from typing import Final

import aiohttp
from aiohttp.http_exceptions import HttpProcessingError

from proxy.upstream.client import UpstreamUnreachable

__all__ = ["UPSTREAM_FAILURES", "upstream_failure"]

logger = logging.getLogger(__name__)

# What the thin client raises for an upstream that could not answer.
UPSTREAM_FAILURES: Final = (
    TimeoutError,
    aiohttp.ClientError,
    HttpProcessingError,
    UpstreamUnreachable,
)


def upstream_failure(exc: BaseException, *, request_id: str, upstream: str) -> tuple[int, str, str]:
    """Log an upstream failure and map it to (status, error, kind): 504 or 502.

    Timeouts come first: aiohttp's `ServerTimeoutError` is both a TimeoutError
    and a `ClientConnectionError`.
    """
    if isinstance(exc, TimeoutError):
        status, error, kind = 504, "upstream timed out", "timeout"
    elif isinstance(exc, (aiohttp.ClientConnectorError, UpstreamUnreachable)):
        status, error, kind = 502, "upstream unreachable", "connect"
    else:
        status, error, kind = 502, "upstream failed", "protocol"
    logger.warning(
        "proxy.upstream_failed",
        extra={"request_id": request_id, "upstream": upstream, "kind": kind, "error": repr(exc)},
    )
    return status, error, kind
