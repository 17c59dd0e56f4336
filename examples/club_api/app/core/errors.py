"""The legacy error shape: every error is a status and `{"error": "<message>"}`.

Handlers raise `ClubApiError` subclasses; `legacy_errors` (a middleware)
turns them, aiohttp's own HTTP errors (unknown path, wrong method) and
unexpected exceptions into that one shape, so no client ever sees an HTML or
plain-text error page. A client that hangs up mid-request is no application
error: it is logged as ``club_api.client_disconnected``, and when the body read
fails with ConnectionResetError it is answered 499 (nginx's "client closed
request"), which only the access log sees; under ``handler_cancellation`` the
handler's CancelledError is logged the same way and goes on. The messages are
part of the API contract (the new handlers must answer byte-identically);
README.md lists them.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Final

import orjson
from aiohttp import hdrs, web

if TYPE_CHECKING:
    from collections.abc import Mapping

    from aiohttp.typedefs import Handler

__all__ = [
    "BadRequest",
    "ClubApiError",
    "Conflict",
    "NotFound",
    "Unauthorized",
    "Unprocessable",
    "json_response",
    "legacy_errors",
]

logger = logging.getLogger(__name__)

# nginx's status for a request the client abandoned; never reaches the client.
CLIENT_CLOSED_REQUEST: Final = 499


class ClubApiError(Exception):
    """club-api refused the request; `status` and `message` are what the client gets."""

    status = 500

    def __init__(self, message: str, *, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = dict(headers or {})


class BadRequest(ClubApiError):
    """A path parameter, query parameter or body is invalid."""

    status = 400


class Unauthorized(ClubApiError):
    """No bearer token, or one that names no active session."""

    status = 401

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={hdrs.WWW_AUTHENTICATE: "Bearer"})


class NotFound(ClubApiError):
    status = 404


class Conflict(ClubApiError):
    status = 409


class Unprocessable(ClubApiError):
    """Valid input that the current state refuses (a full or closed event)."""

    status = 422


def json_response(data: object, *, status: int = 200) -> web.Response:
    """JSON the legacy way: orjson, compact, UTF-8, keys in insertion order."""
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", charset="utf-8"
    )


def error_response(status: int, message: str, headers: Mapping[str, str]) -> web.Response:
    response = json_response({"error": message}, status=status)
    response.headers.update(headers)
    return response


@web.middleware
async def legacy_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer every failure in the legacy error shape."""
    try:
        return await handler(request)
    except asyncio.CancelledError:
        if _client_gone(request):
            _log_disconnect(request)
        raise
    except ClubApiError as exc:
        return error_response(exc.status, exc.message, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:  # noqa: PLR2004  (redirects and the like pass through)
            raise
        # aiohttp's routing errors: 404 "not found", 405 "method not allowed" (+ Allow).
        kept = {k: v for k, v in exc.headers.items() if k == hdrs.ALLOW}
        return error_response(exc.status, exc.reason.lower(), kept)
    except Exception as exc:
        if isinstance(exc, ConnectionResetError) and _client_gone(request):
            _log_disconnect(request)
            return web.Response(status=CLIENT_CLOSED_REQUEST)
        # The last resort: log it with the traceback, never leak it to the client.
        logger.exception(
            "club_api.unhandled_error", extra={"method": request.method, "path": request.path}
        )
        return error_response(500, "internal server error", {})


def _client_gone(request: web.Request) -> bool:
    # A reset from anywhere else (a backend socket) is a real error while the
    # client is still connected.
    transport = request.transport
    return transport is None or transport.is_closing()


def _log_disconnect(request: web.Request) -> None:
    logger.info(
        "club_api.client_disconnected", extra={"method": request.method, "path": request.path}
    )
