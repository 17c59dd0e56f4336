"""In-process dispatch into the new app (proxy.webpath.inprocess) through a real proxy server.

These tests also pin the aiohttp internals InProcessApp relies on
(`Request.clone()` + `Application._handle`): an aiohttp upgrade that changes
them breaks routing, AppKeys or middlewares here, loudly.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
from typing import TYPE_CHECKING

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from proxy.webpath.inprocess import InProcessApp

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from aiohttp.test_utils import TestClient

    ClientFactory = Callable[[web.Application], Awaitable[TestClient[web.Request, web.Application]]]

NAME = web.AppKey("NAME", str)  # set in both apps: tells which app a handler sees
RESOURCE = web.AppKey("RESOURCE", dict)
EVENTS = web.AppKey("EVENTS", list)
INPROC = web.AppKey("INPROC", InProcessApp)


# --- the new app --------------------------------------------------------------


async def get_user(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "id": request.match_info["id"],
            "app": request.app[NAME],
            "config": request.config_dict[NAME],
            "resource": request.app[RESOURCE]["name"],
            "host": request.headers.get("Host"),
            "xff": request.headers.get("X-Forwarded-For"),
            "query": request.query.get("q"),
            "route": request.match_info.route.resource.canonical
            if request.match_info.route.resource
            else None,
        }
    )


async def echo_body(request: web.Request) -> web.Response:
    digest = hashlib.sha256()
    size = 0
    async for chunk in request.content.iter_any():
        digest.update(chunk)
        size += len(chunk)
    return web.json_response({"sha256": digest.hexdigest(), "size": size})


async def boom(request: web.Request) -> web.Response:
    msg = "handler bug"
    raise RuntimeError(msg)


async def redirect(request: web.Request) -> web.Response:
    raise web.HTTPFound("/elsewhere", headers={"X-Why": "moved"})


async def stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/plain"})
    await response.prepare(request)
    for part in (b"one ", b"two ", b"three"):
        await response.write(part)
    await response.write_eof()
    return response


async def ws_echo(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for msg in ws:
        await ws.send_str(f"{request.app[NAME]}:{msg.data}")
    return ws


@web.middleware
async def tag(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    response = await handler(request)
    response.headers["X-New-Middleware"] = request.app[NAME]
    return response


async def mark_prepared(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["X-New-Prepared"] = "1"


def new_app(events: list[str], *, fail_second_ctx: bool = False) -> web.Application:
    async def resource_ctx(app: web.Application) -> AsyncIterator[None]:
        app[RESOURCE] = {"name": "pool-1"}
        events.append("resource:start")
        yield
        events.append("resource:stop")

    async def second_ctx(app: web.Application) -> AsyncIterator[None]:
        if fail_second_ctx:
            msg = "cannot start"
            raise OSError(msg)
        events.append("second:start")
        yield
        events.append("second:stop")

    async def on_shutdown(app: web.Application) -> None:
        events.append("shutdown")

    app = web.Application(middlewares=[tag])
    app[NAME] = "new"
    app[EVENTS] = events
    app.cleanup_ctx.extend([resource_ctx, second_ctx])
    app.on_shutdown.append(on_shutdown)
    app.on_response_prepare.append(mark_prepared)
    app.router.add_get("/api/users/{id}", get_user)
    app.router.add_post("/api/echo", echo_body)
    app.router.add_get("/boom", boom)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/stream", stream)
    app.router.add_get("/ws", ws_echo)
    return app


# --- the proxy ----------------------------------------------------------------


async def proxy_handler(request: web.Request) -> web.StreamResponse:
    inproc = request.app[INPROC]
    if request.headers.get("X-Test-Override"):
        headers = CIMultiDict(request.headers)
        headers["X-Forwarded-For"] = "203.0.113.9"
        return await inproc.handle(request, headers=headers, request_id="rid-override")
    return await inproc.handle(request)


def proxy_app(inproc: InProcessApp) -> web.Application:
    app = web.Application()
    app[NAME] = "proxy"
    app[INPROC] = inproc
    app.cleanup_ctx.append(inproc.cleanup_ctx)
    app.router.add_route("*", "/{tail:.*}", proxy_handler)
    return app


@pytest.fixture
def events() -> list[str]:
    return []


@pytest.fixture
async def client(
    aiohttp_client: ClientFactory, events: list[str]
) -> TestClient[web.Request, web.Application]:
    return await aiohttp_client(proxy_app(InProcessApp(new_app(events))))


# --- lifecycle ----------------------------------------------------------------


async def test_start_and_close_run_cleanup_ctx_in_order(events: list[str]) -> None:
    inproc = InProcessApp(new_app(events))
    await inproc.start()
    assert events == ["resource:start", "second:start"]
    await inproc.close()
    assert events == ["resource:start", "second:start", "shutdown", "second:stop", "resource:stop"]


async def test_failed_start_unwinds_what_started(events: list[str]) -> None:
    inproc = InProcessApp(new_app(events, fail_second_ctx=True))
    with pytest.raises(OSError, match="cannot start"):
        await inproc.start()
    assert events == ["resource:start", "resource:stop"]


async def test_handle_before_start_is_an_error(events: list[str]) -> None:
    inproc = InProcessApp(new_app(events))
    with pytest.raises(RuntimeError, match="start"):
        await inproc.handle(make_mocked_request("GET", "/api/users/1"))
    assert events == []


async def test_proxy_cleanup_ctx_starts_and_closes_the_new_app(
    aiohttp_client: ClientFactory, events: list[str]
) -> None:
    client = await aiohttp_client(proxy_app(InProcessApp(new_app(events))))
    assert events == ["resource:start", "second:start"]
    await client.close()
    assert events[-2:] == ["second:stop", "resource:stop"]


# --- dispatch -----------------------------------------------------------------


async def test_handler_sees_its_own_app_match_info_and_headers(
    client: TestClient[web.Request, web.Application],
) -> None:
    resp = await client.get("/api/users/42?q=x", headers={"Host": "club.example"})
    assert resp.status == 200
    assert await resp.json() == {
        "id": "42",
        "app": "new",  # request.app is the NEW app, so its AppKeys work
        "config": "new",
        "resource": "pool-1",  # created by the new app's cleanup_ctx
        "host": "club.example",
        "xff": None,
        "query": "x",
        "route": "/api/users/{id}",
    }


async def test_middleware_and_prepare_hooks_of_the_new_app_run(
    client: TestClient[web.Request, web.Application],
) -> None:
    resp = await client.get("/api/users/1")
    assert resp.headers["X-New-Middleware"] == "new"
    assert resp.headers["X-New-Prepared"] == "1"


@pytest.mark.parametrize("chunked", [False, True])
async def test_body_streams_to_the_handler(
    client: TestClient[web.Request, web.Application], chunked: bool
) -> None:
    # 3 MiB: above aiohttp's default client_max_size, so it must be streamed.
    body = os.urandom(3 * 1024 * 1024)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 256 * 1024):
            yield body[start : start + 256 * 1024]

    resp = await client.post("/api/echo", data=chunks() if chunked else io.BytesIO(body))
    assert resp.status == 200
    assert await resp.json() == {"sha256": hashlib.sha256(body).hexdigest(), "size": len(body)}


async def test_streaming_response_prepared_by_the_handler(
    client: TestClient[web.Request, web.Application],
) -> None:
    resp = await client.get("/stream")
    assert resp.status == 200
    assert await resp.text() == "one two three"
    assert resp.headers["X-New-Prepared"] == "1"


async def test_unknown_path_is_the_new_apps_404(
    client: TestClient[web.Request, web.Application],
) -> None:
    resp = await client.get("/nope")
    assert resp.status == 404
    assert await resp.text() == "404: Not Found"


async def test_wrong_method_is_the_new_apps_405(
    client: TestClient[web.Request, web.Application],
) -> None:
    resp = await client.delete("/api/users/1")
    assert resp.status == 405
    assert resp.headers["Allow"] == "GET,HEAD"


async def test_raised_http_exception_is_an_answer(
    client: TestClient[web.Request, web.Application],
) -> None:
    resp = await client.get("/redirect", allow_redirects=False)
    assert resp.status == 302
    assert resp.headers["Location"] == "/elsewhere"
    assert resp.headers["X-Why"] == "moved"


async def test_handler_exception_is_a_500_json(
    client: TestClient[web.Request, web.Application],
) -> None:
    resp = await client.get("/boom", headers={"X-Request-ID": "abc-123"})
    assert resp.status == 500
    assert await resp.json() == {"error": "new handler failed", "request_id": "abc-123"}


async def test_headers_override_and_request_id(
    client: TestClient[web.Request, web.Application],
) -> None:
    resp = await client.get("/api/users/7", headers={"X-Test-Override": "1"})
    assert (await resp.json())["xff"] == "203.0.113.9"
    resp = await client.get("/boom", headers={"X-Test-Override": "1"})
    assert (await resp.json())["request_id"] == "rid-override"


async def test_expect_continue_is_answered_once(
    client: TestClient[web.Request, web.Application],
) -> None:
    # The proxy's server sends "100 Continue" before routing; the new app must
    # not send a second one on the same connection.
    assert client.server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    try:
        writer.write(
            b"POST /api/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        assert (
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            == b"HTTP/1.1 100 Continue\r\n\r\n"
        )
        writer.write(b"hello")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    finally:
        writer.close()
        await writer.wait_closed()


async def test_websocket_handler_of_the_new_app(
    client: TestClient[web.Request, web.Application],
) -> None:
    # The hub's `serve(request, user_id)` runs like this: prepared on the clone,
    # which shares the client connection.
    async with client.ws_connect("/ws") as ws:
        await ws.send_str("hi")
        assert await ws.receive_str(timeout=10) == "new:hi"
