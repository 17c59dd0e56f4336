"""A client hanging up mid-request is no application error (no 500, no unhandled_error log)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import pytest
from aiohttp import web

from examples.club_api.app import create_app

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from legacy_compat import Settings
    from tests.club_api.conftest import ClientFactory

WAIT = 15.0
ERRORS_LOGGER = "examples.club_api.app.core.errors"


def _messages(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == name]


def _access(caplog: pytest.LogCaptureFixture, path: str) -> list[str]:
    lines = (r.getMessage() for r in caplog.records if r.name == "aiohttp.access")
    return [line for line in lines if path in line]


async def _until(predicate: Callable[[], object]) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), WAIT)


@pytest.fixture(params=[False, True], ids=["run_app-default", "handler_cancellation"])
async def club_port(
    request: pytest.FixtureRequest, settings: Settings, redis_client: object
) -> AsyncIterator[tuple[int, bool]]:
    """(port, handler_cancellation) of a club-api on a loopback port.

    `web.run_app` (what club-api runs) leaves it off: the handler sees the hang-up
    as ConnectionResetError from the body read. aiohttp's TestServer turns it on:
    the handler is cancelled.
    """
    runner = web.AppRunner(create_app(settings), handler_cancellation=request.param)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    [address] = runner.addresses
    yield int(address[1]), request.param
    await runner.cleanup()


async def _hang_up_mid_body(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    # Expect: 100-continue makes the server say when the handler is about to run,
    # so the hang-up below lands while that request is in progress.
    writer.write(
        b"POST /api/users/2/messages HTTP/1.1\r\nHost: club\r\n"
        b"Authorization: Bearer token-alice\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\nExpect: 100-continue\r\n\r\n"
    )
    await writer.drain()
    assert await asyncio.wait_for(reader.readline(), WAIT) == b"HTTP/1.1 100 Continue\r\n"
    writer.write(b'{"text": "half a bo')
    await writer.drain()
    writer.close()
    await writer.wait_closed()


async def test_hang_up_mid_request_is_logged_not_a_500(
    club_port: tuple[int, bool], caplog: pytest.LogCaptureFixture
) -> None:
    port, handler_cancellation = club_port
    caplog.set_level(logging.INFO, logger=ERRORS_LOGGER)
    caplog.set_level(logging.INFO, logger="aiohttp.access")
    await _hang_up_mid_body(port)
    await _until(lambda: _messages(caplog, "club_api.client_disconnected"))
    [record] = _messages(caplog, "club_api.client_disconnected")
    assert (record.levelno, record.__dict__["path"]) == (logging.INFO, "/api/users/2/messages")
    if not handler_cancellation:  # a cancelled handler answers nothing, logs no access
        # The access line is written last, once the answer could not be sent.
        await _until(lambda: _access(caplog, "/api/users/2/messages"))
        [line] = _access(caplog, "/api/users/2/messages")
        assert '" 499 ' in line, line  # nginx's "client closed request", not a 500
    assert not _messages(caplog, "club_api.unhandled_error")


async def _reset_from_a_backend(_: web.Request) -> web.Response:
    raise ConnectionResetError(104, "Connection reset by peer")


async def test_a_reset_while_the_client_is_connected_is_still_a_500(
    settings: Settings,
    redis_client: object,
    aiohttp_client: ClientFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = create_app(settings)
    app.router.add_get("/test/backend-reset", _reset_from_a_backend)
    client = await aiohttp_client(app)
    caplog.set_level(logging.INFO, logger=ERRORS_LOGGER)
    async with client.get("/test/backend-reset") as response:
        assert response.status == 500
        assert await response.json() == {"error": "internal server error"}
    assert _messages(caplog, "club_api.unhandled_error")
    assert not _messages(caplog, "club_api.client_disconnected")
