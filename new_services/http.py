"""The legacy HTTP contract: `{"error": "<message>"}` errors and orjson bodies.

The messages, statuses and headers are club-api's (examples/club_api/README.md);
a client must not be able to tell which side answered, so this module mirrors
`examples/club_api/app/core/errors.py` exactly instead of importing it (the
legacy app is going away; new_services must not depend on it).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Final

import orjson
from aiohttp import hdrs, web

if TYPE_CHECKING:
    from collections.abc import Mapping

    from aiohttp.typedefs import Handler

__all__ = [
    "ApiError",
    "BadRequest",
    "Conflict",
    "NotFound",
    "Unauthorized",
    "Unprocessable",
    "error_middleware",
    "json_response",
]

logger = logging.getLogger(__name__)

# nginx's status for a request the client abandoned; never reaches the client.
CLIENT_CLOSED_REQUEST: Final = 499


class ApiError(Exception):
    """The request is refused; `status` and `message` are what the client gets."""

    status = 500

    def __init__(self, message: str, *, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = dict(headers or {})


class BadRequest(ApiError):
    """A path parameter, query parameter or body is invalid."""

    status = 400


class Unauthorized(ApiError):
    """No bearer token, or one that names no active session."""

    status = 401

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={hdrs.WWW_AUTHENTICATE: "Bearer"})


class NotFound(ApiError):
    """The id names no row."""

    status = 404


class Conflict(ApiError):
    """The write would duplicate a row."""

    status = 409


class Unprocessable(ApiError):
    """Valid input that the current state refuses (a full or closed event)."""

    status = 422


def json_response(data: object, *, status: int = 200) -> web.Response:
    """orjson, compact, UTF-8, keys in insertion order (the legacy bytes)."""
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", charset="utf-8"
    )


def _error(status: int, message: str, headers: Mapping[str, str]) -> web.Response:
    response = json_response({"error": message}, status=status)
    response.headers.update(headers)
    return response


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer every failure in the legacy error shape."""
    try:
        return await handler(request)
    except ApiError as exc:
        return _error(exc.status, exc.message, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:  # noqa: PLR2004  (redirects pass through)
            raise
        # Routing errors: 404 "not found", 405 "method not allowed" with its Allow header.
        kept = {k: v for k, v in exc.headers.items() if k == hdrs.ALLOW}
        return _error(exc.status, exc.reason.lower(), kept)
    except ConnectionResetError:
        if not _client_gone(request):
            raise
        # The client hung up mid-request: no application error. 499 (nginx's
        # "client closed request") only reaches the access log, as in club-api.
        logger.info(
            "new_services.client_disconnected",
            extra={"method": request.method, "path": request.path},
        )
        return web.Response(status=CLIENT_CLOSED_REQUEST)
    except Exception:
        # The last resort: logged with the traceback, never leaked to the client.
        logger.exception(
            "new_services.unhandled_error", extra={"method": request.method, "path": request.path}
        )
        return _error(500, "internal server error", {})


def _client_gone(request: web.Request) -> bool:
    # A reset from anywhere else (a database or Redis socket) is a real error
    # while the client is still connected.
    transport = request.transport
    return transport is None or transport.is_closing()
