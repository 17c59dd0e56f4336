"""The new side treats a client hang-up like club-api does: logged, no 500, no traceback."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import asyncpg
import pytest
from aiohttp import web

from new_services.app import create_app
from tests.club_api.conftest import ROWS_SQL, club_settings
from tests.club_api.test_disconnect import _access, _hang_up_mid_body, _messages, _until

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

ERRORS_LOGGER = "new_services.http"


@pytest.fixture
async def new_port(pg_dsn: str, redis_url: str, redis_client: object) -> AsyncIterator[int]:
    """new_services served standalone the way `web.run_app` does (no handler cancellation)."""
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute(ROWS_SQL)
    finally:
        await conn.close()
    runner = web.AppRunner(create_app(club_settings(pg_dsn, redis_url)), handler_cancellation=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    [address] = runner.addresses
    yield int(address[1])
    await runner.cleanup()


async def test_hang_up_mid_request_is_logged_not_a_500(
    new_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ERRORS_LOGGER)
    caplog.set_level(logging.INFO, logger="aiohttp.access")
    await _hang_up_mid_body(new_port)
    await _until(lambda: _messages(caplog, "new_services.client_disconnected"))
    [record] = _messages(caplog, "new_services.client_disconnected")
    assert (record.levelno, record.__dict__["path"]) == (logging.INFO, "/api/users/2/messages")
    await _until(lambda: _access(caplog, "/api/users/2/messages"))
    [line] = _access(caplog, "/api/users/2/messages")
    assert '" 499 ' in line, line
    assert not _messages(caplog, "new_services.unhandled_error")
