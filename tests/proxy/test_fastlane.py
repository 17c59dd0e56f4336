"""The fast lane's behaviour: hand-over, pipelining, keep-alive, failures and drain.

Every proxy here is served by `ProxyAppRunner` (`serve_proxy`), as `club-proxy
run` serves it, so client connections start in the fast lane
(`proxy.fastlane.lane`). Requests go to real `EchoUpstream`s on loopback as raw
bytes (`RawClient`), so each test sees exactly what a client would: which
answers arrive, in which order, and when the connection closes. Whether a
request was relayed by the lane or handed to aiohttp is read from the metrics:
`fast_lane_requests` and `club_proxy_fast_lane_handoffs_total{reason}`. Where a
request leaves the lane, its answer is compared with a proxy served with
`fast_lane=False` (aiohttp's path from the first byte).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
from typing import TYPE_CHECKING, Any

import pytest

from proxy.routing.canary import sticky_bucket
from proxy.serving.app import PROXY, ServerLimits, create_app
from proxy.telemetry.accesslog import AccessLog
from tests.proxy import forward_support
from tests.proxy.echo_upstream import EchoUpstream, Received, pattern
from tests.proxy.forward_support import TIMEOUT, RawClient, RawResponse, request, serve_proxy

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from pathlib import Path

    from aiohttp import web

    from proxy.serving.protocol import ProxyAppRunner
    from proxy.upstream.client import ConnectionPool

# The shared fixture of the forwarding tests.
upstream = forward_support.upstream
client_of = forward_support.client_of

_HANDOFF = re.compile(
    rb'^club_proxy_fast_lane_handoffs_total\{reason="([^"]+)"\} (\S+)$', re.MULTILINE
)
# With an idle pooled upstream connection the lane relays without a task
# (answer head and body from the connection's callbacks); without one it
# connects in a task.
POOLED = pytest.mark.parametrize("pooled", [False, True], ids=["fresh-connection", "pooled"])
WS_HEADERS = [
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("Sec-WebSocket-Version", "13"),
]


class AccessLines(logging.Handler):
    """The access entries of one proxy, as `AccessLog` hands them to its logger."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.entries: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.entries.append(record.__dict__["access"])


class Proxies:
    """Proxy apps over routes.yaml files in `tmp_path`, served as `club-proxy run` serves them."""

    def __init__(self, tmp_path: Path) -> None:
        self._tmp_path = tmp_path
        self._files = 0
        self.runners: list[ProxyAppRunner] = []

    def routes(self, text: str) -> Path:
        self._files += 1
        path = self._tmp_path / f"routes-{self._files}.yaml"
        path.write_text(text, encoding="utf-8")
        return path

    def app(self, url: str, *, opts: str = "", **kwargs: Any) -> web.Application:
        """A proxy sending everything to `url` (`opts`: more upstream keys, YAML flow)."""
        path = self.routes(
            "version: 1\n"
            f'upstreams: {{legacy: {{url: "{url}"{opts}}}}}\n'
            "default: legacy\n"
            "routes: []\n"
        )
        return create_app(routes_path=path, reload_on_sighup=False, **kwargs)

    async def serve(self, app: web.Application) -> int:
        runner, port = await serve_proxy(app)
        self.runners.append(runner)
        return port

    async def close(self) -> None:
        for runner in self.runners:
            if runner.server is not None:  # not cleaned up by the test itself
                await runner.cleanup()


@pytest.fixture
async def proxies(tmp_path: Path) -> AsyncIterator[Proxies]:
    served = Proxies(tmp_path)
    yield served
    await served.close()


@pytest.fixture
async def other() -> AsyncIterator[EchoUpstream]:
    echo = await EchoUpstream().start()
    yield echo
    await echo.close()


def handoffs(app: web.Application) -> dict[str, float]:
    """`club_proxy_fast_lane_handoffs_total` by reason."""
    text = app[PROXY].metrics.render()
    return {m[1].decode(): float(m[2]) for m in _HANDOFF.finditer(text)}


def lane_requests(app: web.Application) -> int:
    return app[PROXY].metrics.fast_lane_requests


def pool_of(app: web.Application, name: str = "legacy") -> ConnectionPool:
    return app[PROXY].pools.current[name].client


def access_lines(logger_name: str) -> tuple[AccessLog, AccessLines]:
    """An access log whose entries land in the returned handler."""
    logger = logging.getLogger(logger_name)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    lines = AccessLines()
    logger.handlers[:] = [lines]
    return AccessLog(logger=logger), lines


async def wait_until(predicate: Callable[[], bool]) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), TIMEOUT)


async def exchange(client: RawClient, data: bytes) -> RawResponse:
    await client.send(data)
    return await client.read_response()


def request_line(response: RawResponse) -> str:
    line: str = json.loads(response.body)["request_line"]
    return line


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- hand-over -------------------------------------------------------------------


async def test_a_request_with_a_body_hands_the_connection_over_for_good(
    proxies: Proxies, upstream: EchoUpstream, client_of: Callable[[int], Awaitable[RawClient]]
) -> None:
    app = proxies.app(upstream.url)
    client = await client_of(await proxies.serve(app))
    first = await exchange(client, request("GET", "/echo?1"))
    second = await exchange(client, request("POST", "/echo?2", body=b"hello"))
    third = await exchange(client, request("GET", "/echo?3"))
    assert [r.status for r in (first, second, third)] == [200, 200, 200]
    assert request_line(first) == "GET /echo?1 HTTP/1.1"
    assert request_line(second) == "POST /echo?2 HTTP/1.1"
    assert json.loads(second.body)["body_len"] == 5
    assert request_line(third) == "GET /echo?3 HTTP/1.1"
    assert handoffs(app) == {"body": 1}
    # Only the first GET: the connection stayed with aiohttp after the POST.
    assert lane_requests(app) == 1


async def test_pipelined_requests_are_handed_over_and_answered_in_order(
    proxies: Proxies, upstream: EchoUpstream, client_of: Callable[[int], Awaitable[RawClient]]
) -> None:
    app = proxies.app(upstream.url)
    client = await client_of(await proxies.serve(app))
    await client.send(request("GET", "/echo?1") + request("GET", "/echo?2"))
    lines = [request_line(await client.read_response()) for _ in range(2)]
    assert lines == ["GET /echo?1 HTTP/1.1", "GET /echo?2 HTTP/1.1"]
    assert handoffs(app) == {"pipelined": 1}
    assert lane_requests(app) == 0


async def test_a_request_sent_during_an_answer_waits_and_stays_in_the_lane(
    proxies: Proxies, upstream: EchoUpstream, client_of: Callable[[int], Awaitable[RawClient]]
) -> None:
    app = proxies.app(upstream.url)
    client = await client_of(await proxies.serve(app))
    await client.send(request("GET", "/slow?delay=0.3"))
    # The first request is in flight (upstream has it) before the second is sent.
    await wait_until(lambda: len(upstream.received) == 1)
    await client.send(request("GET", "/echo?2"))
    first = await client.read_response()
    second = await client.read_response()
    assert request_line(first) == "GET /slow?delay=0.3 HTTP/1.1"
    assert request_line(second) == "GET /echo?2 HTTP/1.1"
    assert lane_requests(app) == 2
    assert handoffs(app) == {}


HANDED_OVER = {
    # id: (request bytes, hand-over reason, status aiohttp's path answers)
    "http10": (b"GET /echo HTTP/1.0\r\nHost: proxy.test\r\n\r\n", "http10", 200),
    "connection-close": (request("GET", "/echo", headers=[("Connection", "close")]), "close", 200),
    "expect-no-body": (
        request("GET", "/echo", headers=[("Expect", "100-continue")]),
        "expect",
        200,
    ),
    # With a body, the body is what the lane sees first (its label), not Expect.
    "expect-with-body": (
        request("PUT", "/echo", headers=[("Expect", "100-continue")], body=b"abc"),
        "body",
        200,
    ),
    # The plain upstream answers the handshake with 200: a refused upgrade.
    "websocket-upgrade": (request("GET", "/echo", headers=WS_HEADERS), "upgrade", 200),
    # OPTIONS * is about the server: the proxy answers it (200, Allow).
    "asterisk-form": (b"OPTIONS * HTTP/1.1\r\nHost: proxy.test\r\n\r\n", "target", 200),
    "absolute-form": (request("GET", "http://proxy.test/echo?a=1"), "target", 200),
    "trace": (request("TRACE", "/echo"), "method", 405),
    # llhttp gives CONNECT a tunnel payload, so the lane's first check (a
    # body) names it: the `method` reason is only ever TRACE's.
    "connect": (
        b"CONNECT proxy.test:443 HTTP/1.1\r\nHost: proxy.test:443\r\n\r\n",
        "body",
        405,
    ),
    "loop": (request("GET", "/echo", headers=[("Via", "1.1 club-proxy")]), "loop", 508),
}


def _answer(response: RawResponse) -> tuple[object, ...]:
    body: object = response.body
    if response.header("Content-Type") == "application/json":
        body = json.loads(response.body)
        if isinstance(body, dict) and "headers" in body:
            # The echo of a refused upgrade: each WebSocket hop draws its own key.
            body["headers"] = [h for h in body["headers"] if h[0] != "Sec-WebSocket-Key"]
    return (
        response.status,
        response.informational,
        response.header("Content-Type"),
        response.header("X-Request-ID"),
        body,
    )


@pytest.mark.parametrize("case", HANDED_OVER)
async def test_a_request_the_lane_does_not_relay_is_answered_by_aiohttps_path(
    proxies: Proxies,
    upstream: EchoUpstream,
    client_of: Callable[[int], Awaitable[RawClient]],
    case: str,
) -> None:
    data, reason, status = HANDED_OVER[case]
    # A fixed request id, so both paths' answers can be compared whole.
    head, sep, body = data.partition(b"\r\n\r\n")
    data = head + b"\r\nX-Request-ID: handover-1" + sep + body
    fast_app = proxies.app(upstream.url)
    slow_app = proxies.app(upstream.url, fast_lane=False)
    fast = await exchange(await client_of(await proxies.serve(fast_app)), data)
    slow = await exchange(await client_of(await proxies.serve(slow_app)), data)
    assert fast.status == status
    assert _answer(fast) == _answer(slow)
    assert handoffs(fast_app) == {reason: 1}
    assert lane_requests(fast_app) == 0


async def test_an_absolute_form_target_is_forwarded_in_origin_form(
    proxies: Proxies, upstream: EchoUpstream, client_of: Callable[[int], Awaitable[RawClient]]
) -> None:
    app = proxies.app(upstream.url)
    client = await client_of(await proxies.serve(app))
    response = await exchange(client, request("GET", "http://proxy.test/echo?a=1"))
    assert request_line(response) == "GET /echo?a=1 HTTP/1.1"


@pytest.mark.parametrize(
    "data",
    [
        b"GET /echo HTTP/1.1\r\nHost: proxy.test\r\nNo colon here\r\n\r\n",
        (
            b"POST /echo HTTP/1.1\r\nHost: proxy.test\r\nContent-Length: 6\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        ),
    ],
    ids=["bad-header-line", "cl-and-te"],
)
async def test_a_malformed_request_gets_the_json_400_and_a_closed_connection(
    proxies: Proxies,
    upstream: EchoUpstream,
    client_of: Callable[[int], Awaitable[RawClient]],
    data: bytes,
) -> None:
    app = proxies.app(upstream.url)
    client = await client_of(await proxies.serve(app))
    response = await exchange(client, data)
    assert response.status == 400
    assert response.header("Content-Type") == "application/json"
    assert json.loads(response.body) == {
        "error": "bad request",
        "request_id": response.header("X-Request-ID"),
    }
    assert await client.rest_until_close() == b""
    assert upstream.received == []
    assert handoffs(app) == {"malformed": 1}


async def test_a_new_route_hands_the_connection_over(
    proxies: Proxies, upstream: EchoUpstream, client_of: Callable[[int], Awaitable[RawClient]]
) -> None:
    path = proxies.routes(
        "version: 1\n"
        f'upstreams: {{legacy: {{url: "{upstream.url}"}}}}\n'
        'new: {app: "tests.proxy.newapp_sample:create_app"}\n'
        "default: legacy\n"
        "routes:\n"
        '  - {id: users, match: "GET /api/users/{id}", to: new}\n'
    )
    app = create_app(routes_path=path, reload_on_sighup=False)
    client = await client_of(await proxies.serve(app))
    user = await exchange(client, request("GET", "/api/users/7"))
    assert json.loads(user.body)["side"] == "new"
    # The connection stays with aiohttp: this one is not relayed by the lane.
    assert (await exchange(client, request("GET", "/echo"))).status == 200
    assert handoffs(app) == {"new": 1}
    assert lane_requests(app) == 0


# --- keep-alive --------------------------------------------------------------------


async def test_an_idle_keepalive_connection_is_closed_after_the_timeout(
    proxies: Proxies, upstream: EchoUpstream, client_of: Callable[[int], Awaitable[RawClient]]
) -> None:
    # 0.6 s: long enough that a stalled test process (the upstream shares its
    # event loop) does not see the close before it looks.
    app = proxies.app(upstream.url, server_limits=ServerLimits(keepalive_timeout=0.6))
    client = await client_of(await proxies.serve(app))
    response = await exchange(client, request("GET", "/echo"))
    assert response.status == 200
    assert not client.reader.at_eof()
    assert await asyncio.wait_for(client.reader.read(), TIMEOUT) == b""
    assert lane_requests(app) == 1


async def test_a_request_longer_than_the_keepalive_timeout_is_not_cut(
    proxies: Proxies, upstream: EchoUpstream, client_of: Callable[[int], Awaitable[RawClient]]
) -> None:
    # The answer takes more than twice the keep-alive time; the margin after it
    # lets a stalled test process still send the next request in time.
    app = proxies.app(upstream.url, server_limits=ServerLimits(keepalive_timeout=0.5))
    client = await client_of(await proxies.serve(app))
    slow = await exchange(client, request("GET", "/slow?delay=1.2"))
    assert slow.status == 200
    # The connection is still usable right after the long answer.
    follow = await exchange(client, request("GET", "/echo"))
    assert follow.status == 200
    assert lane_requests(app) == 2


# --- failures ----------------------------------------------------------------------


@POOLED
async def test_a_client_leaving_during_a_slow_answer_closes_the_upstream_connection(
    proxies: Proxies,
    upstream: EchoUpstream,
    client_of: Callable[[int], Awaitable[RawClient]],
    pooled: bool,
) -> None:
    access, lines = access_lines(f"tests.fastlane.access.{pooled}")
    app = proxies.app(upstream.url, access_log=access)
    port = await proxies.serve(app)
    if pooled:
        # Leaves one idle keep-alive connection: the lane relays without a task.
        assert (await exchange(await client_of(port), request("GET", "/echo"))).status == 200
        assert pool_of(app).idle_connections == 1
    client = await client_of(port)
    await client.send(request("GET", "/slow?delay=2", headers=[("X-Request-ID", "gone-1")]))
    await wait_until(lambda: any(r.target == b"/slow?delay=2" for r in upstream.received))
    await client.close()
    await wait_until(lambda: any(e["request_id"] == "gone-1" for e in lines.entries))
    entry = next(e for e in lines.entries if e["request_id"] == "gone-1")
    assert entry["status"] == 499
    assert entry["aborted"] == "client"
    # The upstream connection was closed, not kept for the next request.
    pool = pool_of(app)
    assert pool.open_connections == 0
    assert pool.idle_connections == 0
    assert app[PROXY].metrics.in_flight == 0


@POOLED
async def test_a_client_leaving_mid_body_closes_the_upstream_connection(
    proxies: Proxies,
    upstream: EchoUpstream,
    client_of: Callable[[int], Awaitable[RawClient]],
    pooled: bool,
) -> None:
    app = proxies.app(upstream.url)
    client = await client_of(await proxies.serve(app))
    if pooled:
        assert (await exchange(client, request("GET", "/echo"))).status == 200
    await client.send(request("GET", "/big?size=50000000"))
    assert (await client.read_head())[0] == 200
    assert await client.reader.read(1000)
    await client.close()
    # /big watches its connection while it sends: the proxy closed it.
    await asyncio.wait_for(upstream.peer_gone.wait(), TIMEOUT)
    await wait_until(lambda: app[PROXY].metrics.in_flight == 0)
    assert pool_of(app).open_connections == 0


class _OnRequest(list[Received]):
    """`EchoUpstream.received` calling `hook` with each request as it arrives, before the answer."""

    def __init__(self, hook: Callable[[Received], None]) -> None:
        super().__init__()
        self._hook = hook

    def append(self, item: Received) -> None:
        super().append(item)
        self._hook(item)


async def test_a_client_leaving_as_the_answer_head_arrives_frees_its_upstream_connection(
    proxies: Proxies, upstream: EchoUpstream, client_of: Callable[[int], Awaitable[RawClient]]
) -> None:
    access, lines = access_lines("tests.fastlane.access.race")
    opts = ", max_connections: 1, connect_timeout: 500ms"
    app = proxies.app(upstream.url, opts=opts, access_log=access)
    port = await proxies.serve(app)
    # A pooled connection: the lane sends without a task and hears the answer
    # head in the connection's callback, which starts a task for the body.
    assert (await exchange(await client_of(port), request("GET", "/echo"))).status == 200
    client = await client_of(port)

    def leave(seen: Received) -> None:
        # The client's FIN goes out just before /hold's head and first chunk,
        # so the proxy reads both in one turn of the loop: the client's
        # connection_lost is queued ahead of the body task's first step.
        if seen.target == b"/hold":
            client.writer.write_eof()

    upstream.received = _OnRequest(leave)
    await client.send(request("GET", "/hold", headers=[("X-Request-ID", "race-1")]))
    assert await client.rest_until_close() is not None
    # The pool's only connection must be free for the next request (else 504
    # after the 500 ms wait for a connection).
    follow = await exchange(await client_of(port), request("GET", "/echo"))
    assert follow.status == 200
    entry = next(e for e in lines.entries if e["request_id"] == "race-1")
    assert (entry["status"], entry["aborted"]) == (499, "client")
    assert app[PROXY].metrics.in_flight == 0


def _error_answer(response: RawResponse) -> tuple[object, ...]:
    body = json.loads(response.body)
    return response.status, response.header("Content-Type"), sorted(body), body["error"]


async def _failure_parity(
    proxies: Proxies,
    client_of: Callable[[int], Awaitable[RawClient]],
    url: str,
    target: str,
    *,
    opts: str = "",
    pooled: bool = False,
) -> tuple[RawResponse, RawResponse]:
    """The same failing request through the fast lane and through aiohttp's path."""
    answers = []
    for fast_lane in (True, False):
        app = proxies.app(url, opts=opts, fast_lane=fast_lane)
        client = await client_of(await proxies.serve(app))
        if pooled:
            assert (await exchange(client, request("GET", "/echo"))).status == 200
        answers.append(await exchange(client, request("GET", target)))
        assert lane_requests(app) == (1 + pooled if fast_lane else 0)
    fast, slow = answers
    return fast, slow


async def test_an_unreachable_upstream_is_a_json_502_as_on_aiohttps_path(
    proxies: Proxies, client_of: Callable[[int], Awaitable[RawClient]]
) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    fast, slow = await _failure_parity(proxies, client_of, url, "/echo")
    assert fast.status == 502
    body = json.loads(fast.body)
    assert set(body) == {"error", "request_id"}
    assert fast.header("X-Request-ID") == body["request_id"]
    assert _error_answer(fast) == _error_answer(slow)


@POOLED
async def test_an_upstream_read_timeout_is_a_json_504_as_on_aiohttps_path(
    proxies: Proxies,
    upstream: EchoUpstream,
    client_of: Callable[[int], Awaitable[RawClient]],
    pooled: bool,
) -> None:
    fast, slow = await _failure_parity(
        proxies,
        client_of,
        upstream.url,
        "/slow?delay=2",
        opts=', read_timeout: "200ms"',
        pooled=pooled,
    )
    assert fast.status == 504
    body = json.loads(fast.body)
    assert set(body) == {"error", "request_id"}
    assert fast.header("X-Request-ID") == body["request_id"]
    assert _error_answer(fast) == _error_answer(slow)


@POOLED
async def test_an_upstream_dying_mid_body_cuts_the_client_connection(
    proxies: Proxies,
    upstream: EchoUpstream,
    client_of: Callable[[int], Awaitable[RawClient]],
    pooled: bool,
) -> None:
    app = proxies.app(upstream.url)
    client = await client_of(await proxies.serve(app))
    if pooled:
        assert (await exchange(client, request("GET", "/echo"))).status == 200
    response = await exchange(client, request("GET", "/die?size=100000"))
    assert response.status == 200
    assert response.header("Content-Length") == "200000"
    # Never a complete answer: the body stops short and the connection is gone.
    assert not response.complete
    assert len(response.body) < 200000
    assert await client.rest_until_close() == b""
    assert lane_requests(app) == 1 + pooled


async def test_a_keepalive_connection_the_upstream_closed_is_replaced_by_a_fresh_one(
    proxies: Proxies, upstream: EchoUpstream, client_of: Callable[[int], Awaitable[RawClient]]
) -> None:
    app = proxies.app(upstream.url)
    port = await proxies.serve(app)
    # The upstream closes the connection right after this answer (no Connection: close).
    first = await exchange(await client_of(port), request("GET", "/keepalive-close"))
    assert first.status == 200
    second = await exchange(await client_of(port), request("GET", "/echo"))
    assert second.status == 200
    assert upstream.accepted == 2
    assert lane_requests(app) == 2


async def test_a_get_whose_pooled_connection_closes_unanswered_is_retried_once(
    proxies: Proxies, upstream: EchoUpstream, client_of: Callable[[int], Awaitable[RawClient]]
) -> None:
    # /drop reads the request and closes without a byte: on the reused
    # connection that is the stale keep-alive race, so the GET goes out once
    # more on a fresh connection; /drop drops that too, which is a 502.
    app = proxies.app(upstream.url)
    client = await client_of(await proxies.serve(app))
    assert (await exchange(client, request("GET", "/echo"))).status == 200
    response = await exchange(client, request("GET", "/drop"))
    assert response.status == 502
    assert [r.target for r in upstream.received].count(b"/drop") == 2
    assert upstream.accepted == 2


async def test_a_bodiless_post_whose_pooled_connection_closes_unanswered_is_not_retried(
    proxies: Proxies, upstream: EchoUpstream, client_of: Callable[[int], Awaitable[RawClient]]
) -> None:
    app = proxies.app(upstream.url)
    client = await client_of(await proxies.serve(app))
    assert (await exchange(client, request("GET", "/echo"))).status == 200
    response = await exchange(client, request("POST", "/drop"))
    assert response.status == 502
    assert [r.target for r in upstream.received].count(b"/drop") == 1
    assert lane_requests(app) == 2


@POOLED
async def test_a_large_answer_read_slowly_arrives_intact(
    proxies: Proxies, upstream: EchoUpstream, pooled: bool
) -> None:
    size = 5_000_000
    app = proxies.app(upstream.url)
    port = await proxies.serve(app)
    # A small client buffer, so the proxy meets a full socket and must wait.
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=4096)
    client = RawClient(reader, writer)
    try:
        if pooled:
            assert (await exchange(client, request("GET", "/echo"))).status == 200
        await client.send(request("GET", f"/big?size={size}"))
        status, _, headers = await client.read_head()
        assert status == 200
        assert dict(headers)["Content-Length"] == str(size)
        parts = []
        for _ in range(40):
            parts.append(await asyncio.wait_for(reader.read(4096), TIMEOUT))
            await asyncio.sleep(0.01)
        received = sum(len(p) for p in parts)
        parts.append(await asyncio.wait_for(reader.readexactly(size - received), TIMEOUT))
    finally:
        await client.close()
    body = b"".join(parts)
    assert len(body) == size
    assert body == pattern(size)
    assert lane_requests(app) == 1 + pooled


# --- graceful shutdown -------------------------------------------------------------


async def test_shutdown_lets_an_answer_in_flight_finish_then_closes(
    proxies: Proxies, upstream: EchoUpstream, client_of: Callable[[int], Awaitable[RawClient]]
) -> None:
    app = proxies.app(upstream.url)
    port = await proxies.serve(app)
    client = await client_of(port)
    await client.send(request("GET", "/slow?delay=0.5"))
    await wait_until(lambda: len(upstream.received) == 1)
    cleanup = asyncio.create_task(proxies.runners[0].cleanup())
    response = await client.read_response()
    assert response.status == 200
    assert response.complete
    assert request_line(response) == "GET /slow?delay=0.5 HTTP/1.1"
    assert await client.rest_until_close() == b""
    await asyncio.wait_for(cleanup, TIMEOUT)
    assert lane_requests(app) == 1


async def test_shutdown_closes_an_idle_keepalive_connection(
    proxies: Proxies, upstream: EchoUpstream, client_of: Callable[[int], Awaitable[RawClient]]
) -> None:
    app = proxies.app(upstream.url)
    client = await client_of(await proxies.serve(app))
    assert (await exchange(client, request("GET", "/echo"))).status == 200
    await asyncio.wait_for(proxies.runners[0].cleanup(), TIMEOUT)
    assert await client.rest_until_close() == b""


# --- canary routes -----------------------------------------------------------------


def _canary_routes(proxies: Proxies, legacy: EchoUpstream, other: EchoUpstream) -> web.Application:
    path = proxies.routes(
        "version: 1\n"
        "upstreams:\n"
        f'  legacy: {{url: "{legacy.url}"}}\n'
        f'  other: {{url: "{other.url}"}}\n'
        "default: legacy\n"
        "routes:\n"
        "  - {id: by-header, match: GET /by-header, to: legacy,"
        ' canary: {to: other, weight: 0.5, sticky: "header:X-User"}}\n'
        "  - {id: by-cookie, match: GET /by-cookie, to: legacy,"
        ' canary: {to: other, weight: 0.5, sticky: "cookie:user"}}\n'
    )
    return create_app(routes_path=path, reload_on_sighup=False)


def _users() -> tuple[str, str]:
    """A sticky value the canary takes (bucket below 0.5) and one it does not."""
    names = [f"user-{i}" for i in range(100)]
    canary = next(n for n in names if sticky_bucket(n) < 0.5)
    stays = next(n for n in names if sticky_bucket(n) >= 0.5)
    return canary, stays


async def test_a_header_sticky_canary_route_stays_in_the_lane(
    proxies: Proxies,
    upstream: EchoUpstream,
    other: EchoUpstream,
    client_of: Callable[[int], Awaitable[RawClient]],
) -> None:
    app = _canary_routes(proxies, upstream, other)
    client = await client_of(await proxies.serve(app))
    canary, stays = _users()
    ports = []
    for user in (canary, stays, canary):
        response = await exchange(client, request("GET", "/by-header", headers=[("X-User", user)]))
        ports.append(json.loads(response.body)["port"])
    assert ports == [other.port, upstream.port, other.port]
    assert lane_requests(app) == 3
    assert handoffs(app) == {}


async def test_a_cookie_sticky_canary_route_is_handed_over(
    proxies: Proxies,
    upstream: EchoUpstream,
    other: EchoUpstream,
    client_of: Callable[[int], Awaitable[RawClient]],
) -> None:
    app = _canary_routes(proxies, upstream, other)
    client = await client_of(await proxies.serve(app))
    canary, stays = _users()
    ports = []
    for user in (canary, stays):
        cookie = [("Cookie", f"theme=dark; user={user}")]
        response = await exchange(client, request("GET", "/by-cookie", headers=cookie))
        ports.append(json.loads(response.body)["port"])
    assert ports == [other.port, upstream.port]
    assert handoffs(app) == {"canary": 1}
    assert lane_requests(app) == 0
