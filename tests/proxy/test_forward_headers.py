"""Transparency of headers and targets (pitfalls checklist §1: 1-3, 6-7, 12-16, 24-25, 28).

Every test drives the proxy with raw bytes and looks at the raw bytes the echo
upstream received (or the proxy sent back), so nothing is normalised on the way.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from proxy.serving.server import ServeConfig, build_app
from tests.proxy import forward_support
from tests.proxy.echo_upstream import BIG_COOKIE, COOKIES, EchoUpstream
from tests.proxy.forward_support import RawClient, request

if TYPE_CHECKING:
    from pathlib import Path

    from proxy.serving.protocol import ProxyAppRunner

# The shared fixtures of the forwarding tests.
proxy_port = forward_support.proxy_port
raw = forward_support.raw
upstream = forward_support.upstream


async def exchange(raw: RawClient, data: bytes, *, head: bool = False) -> dict[str, object]:
    await raw.send(data)
    response = await raw.read_response(head=head)
    assert response.status == 200, response
    result: dict[str, object] = json.loads(response.body)
    return result


async def test_upstream_sees_exactly_the_client_headers_plus_the_gateway_ones(
    raw: RawClient, upstream: EchoUpstream
) -> None:
    # No User-Agent, Accept, Accept-Encoding or Content-Type injected by aiohttp,
    # client order kept, proxy headers appended at the end.
    await exchange(raw, request("POST", "/echo", headers=[("X-B", "2"), ("X-A", "1")], body=b"x"))
    seen = upstream.received[-1]
    names = [k.lower() for k, _ in seen.headers]
    assert names == [
        "host",
        "x-b",
        "x-a",
        "content-length",
        "via",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-request-id",
    ]
    assert seen.header("Via") == "1.1 club-proxy"
    assert seen.header("X-Forwarded-For") == "127.0.0.1"
    assert seen.header("X-Forwarded-Proto") == "http"


async def test_client_agent_headers_pass_unchanged(raw: RawClient, upstream: EchoUpstream) -> None:
    sent = [
        ("User-Agent", "legacy-app/1.0"),
        ("Accept", "application/json"),
        ("Accept-Encoding", "gzip, br"),
    ]
    await exchange(raw, request(headers=sent))
    seen = upstream.received[-1]
    for name, value in sent:
        assert seen.all(name) == [value]


async def test_hop_by_hop_request_headers_and_connection_tokens_are_removed(
    raw: RawClient, upstream: EchoUpstream
) -> None:
    hop = [
        ("Connection", "keep-alive, X-Foo"),
        ("X-Foo", "1"),
        ("Keep-Alive", "timeout=5"),
        ("Proxy-Connection", "keep-alive"),
        ("TE", "trailers"),
        ("Proxy-Authorization", "Basic c2VjcmV0"),
        ("Upgrade", "h2c"),
        ("X-Kept", "yes"),
    ]
    await exchange(raw, request(headers=hop))
    names = {k.lower() for k, _ in upstream.received[-1].headers}
    removed = {"connection", "x-foo", "keep-alive", "proxy-connection", "te", "upgrade"}
    assert not names & {*removed, "proxy-authorization"}
    assert "x-kept" in names


async def test_hop_by_hop_response_headers_are_removed(raw: RawClient) -> None:
    await raw.send(request("GET", "/hop"))
    response = await raw.read_response()
    names = set(response.names())
    assert not names & {"x-hop", "keep-alive", "proxy-connection"}
    assert response.all("Connection") == []
    assert response.header("X-End") == "2"
    assert response.body == b"hop"


async def test_connection_tokens_cannot_remove_proxy_headers(
    raw: RawClient, upstream: EchoUpstream
) -> None:
    # Traefik CVE-2024-45410: listing proxy-owned headers in Connection.
    attack = [
        ("Connection", "X-Forwarded-For, X-Request-ID, X-Forwarded-Host, Via, Host"),
        ("X-Request-ID", "client-id-1"),
    ]
    await exchange(raw, request(headers=attack, host="api.example.com"))
    seen = upstream.received[-1]
    assert seen.header("X-Forwarded-For") == "127.0.0.1"
    assert seen.header("X-Forwarded-Host") == "api.example.com"
    assert seen.header("Via") == "1.1 club-proxy"
    assert seen.header("Host") == "api.example.com"
    assert seen.header("X-Request-ID") is not None


async def test_client_connection_close_does_not_reach_the_upstream_pool(
    proxy_port: int, upstream: EchoUpstream
) -> None:
    for _ in range(30):
        client = await RawClient.connect(proxy_port)
        await client.send(request(headers=[("Connection", "close")]))
        assert (await client.read_response()).status == 200
        await client.close()
    assert all(r.header("Connection") is None for r in upstream.received)
    # Keep-alive towards the upstream survived every client's `close`.
    assert upstream.accepted == 1


async def test_multiple_set_cookie_lines_stay_separate(raw: RawClient) -> None:
    await raw.send(request("GET", "/cookies"))
    response = await raw.read_response()
    assert response.all("Set-Cookie") == list(COOKIES)


async def test_original_host_is_preserved_and_forwarded(
    raw: RawClient, upstream: EchoUpstream
) -> None:
    await exchange(raw, request(host="api.example.com:8443"))
    seen = upstream.received[-1]
    assert seen.all("Host") == ["api.example.com:8443"]
    assert seen.header("X-Forwarded-Host") == "api.example.com:8443"


async def test_forwarding_headers_from_an_untrusted_peer_are_replaced(
    raw: RawClient, upstream: EchoUpstream
) -> None:
    spoof = [
        ("X-Forwarded-For", "1.2.3.4"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "evil.example"),
        ("Forwarded", "for=1.2.3.4;proto=https"),
    ]
    await exchange(raw, request(headers=spoof))
    seen = upstream.received[-1]
    assert seen.all("X-Forwarded-For") == ["127.0.0.1"]
    assert seen.all("X-Forwarded-Proto") == ["http"]
    assert seen.all("X-Forwarded-Host") == ["proxy.test"]
    assert seen.all("Forwarded") == []


async def test_via_is_appended_and_a_loop_is_refused(
    raw: RawClient, upstream: EchoUpstream
) -> None:
    await exchange(raw, request(headers=[("Via", "1.0 edge")]))
    assert upstream.received[-1].all("Via") == ["1.0 edge, 1.1 club-proxy"]
    count = len(upstream.received)
    await raw.send(request(headers=[("Via", "1.1 edge, 1.1 club-proxy")]))
    response = await raw.read_response()
    assert response.status == 508
    assert json.loads(response.body)["error"] == "loop detected"
    assert len(upstream.received) == count


@pytest.mark.parametrize(
    ("edge", "inner", "status"),
    [
        ("edge-1", "club-proxy", 200),  # different names: both tiers relay
        ("club-proxy", "edge-1", 200),
        ("club-proxy", "club-proxy", 508),  # the same name: the inner tier sees a loop
    ],
)
async def test_two_tiers_in_series_relay_when_their_via_pseudonyms_differ(
    upstream: EchoUpstream, tmp_path: Path, edge: str, inner: str, status: int
) -> None:
    # Each tier's app built as `club-proxy run` builds it, from its ServeConfig.
    runners: list[ProxyAppRunner] = []
    url = upstream.url
    port = upstream.port
    try:
        for name in (inner, edge):
            routes = tmp_path / f"routes-{len(runners)}.yaml"
            routes.write_text(
                f'version: 1\nupstreams: {{legacy: {{url: "{url}"}}}}\ndefault: legacy\nroutes: []\n',
                encoding="utf-8",
            )
            app = build_app(ServeConfig(routes_path=routes, pseudonym=name))
            runner, port = await forward_support.serve_proxy(app)
            runners.append(runner)
            url = f"http://127.0.0.1:{port}"
        client = await RawClient.connect(port)
        try:
            await client.send(request(headers=[("Via", "1.0 browser-proxy")]))
            response = await client.read_response()
        finally:
            await client.close()
    finally:
        for runner in reversed(runners):
            await runner.cleanup()
    assert response.status == status
    if status == 200:
        assert upstream.received[-1].all("Via") == [f"1.0 browser-proxy, 1.1 {edge}, 1.1 {inner}"]
    else:
        assert json.loads(response.body)["error"] == "loop detected"
        assert upstream.received == []


@pytest.mark.parametrize(
    "target",
    [
        "/api/a%2Fb",  # encoded slash stays encoded
        "/api/x/../admin",  # dot segments are not resolved on the way
        "/api/%2e%2e/admin",  # encoded dots stay encoded
        "//evil.example/x",  # never parsed as an authority
        "/api;x=1",  # matrix parameters kept
        "/x%7Cy?a=%2B&a=%20&b",  # no requoting of path or query
        "/%30?q=%7e~",  # %30 is not decoded to 0
        "/a?x=1&&y=&=",  # odd query kept as sent
    ],
)
async def test_raw_target_is_forwarded_byte_exact(
    raw: RawClient, upstream: EchoUpstream, target: str
) -> None:
    await raw.send(request("GET", target))
    response = await raw.read_response()
    assert response.status == 200
    seen = upstream.received[-1]
    assert seen.target == target.encode()
    assert seen.header("Host") == "proxy.test"


async def test_unknown_methods_pass_connect_and_trace_are_refused(
    raw: RawClient, upstream: EchoUpstream
) -> None:
    body = await exchange(raw, request("PROPFIND", "/dav", headers=[("Depth", "1")]))
    assert str(body["request_line"]).startswith("PROPFIND /dav ")
    count = len(upstream.received)
    await raw.send(request("TRACE", "/echo"))
    assert (await raw.read_response()).status == 405
    connect = await RawClient.connect(raw.writer.get_extra_info("peername")[1])
    try:
        await connect.send(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
        assert (await connect.read_response(head=True)).status in {400, 405}
    finally:
        await connect.close()
    assert len(upstream.received) == count


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ("abc-123_x.y", True),  # plain id: kept
        ("<script>", False),  # markup: replaced
        ("a" * 129, False),  # too long: replaced
        ("a b", False),  # space: replaced
    ],
)
async def test_request_id_kept_if_valid_generated_otherwise_and_echoed(
    raw: RawClient, upstream: EchoUpstream, sent: str, kept: bool
) -> None:
    await raw.send(request(headers=[("X-Request-ID", sent)]))
    response = await raw.read_response()
    upstream_id = upstream.received[-1].header("X-Request-ID")
    assert response.header("X-Request-ID") == upstream_id
    assert (upstream_id == sent) is kept
    assert upstream_id
    assert len(upstream_id) <= 128


async def test_no_server_or_content_type_is_added_to_a_bare_response(raw: RawClient) -> None:
    await raw.send(request("GET", "/bare"))
    response = await raw.read_response()
    assert response.body == b"bare"
    assert response.header("Server") is None
    assert response.header("Content-Type") is None
    # A recipient with a clock adds Date when forwarding a response without one (RFC 9110 §6.6.1).
    assert response.header("Date") is not None


async def test_header_value_with_bare_cr_is_rejected(
    raw: RawClient, upstream: EchoUpstream
) -> None:
    await raw.send(b"GET /echo HTTP/1.1\r\nHost: proxy.test\r\nX-Evil: a\rInjected: 1\r\n\r\n")
    response = await raw.read_response()
    assert response.status == 400
    assert upstream.received == []


async def test_large_upstream_set_cookie_passes(raw: RawClient) -> None:
    # 12 KiB, above aiohttp's default 8190-byte client field limit.
    await raw.send(request("GET", "/bigcookie"))
    response = await raw.read_response()
    assert response.status == 200
    assert response.all("Set-Cookie") == [BIG_COOKIE]


async def test_request_header_limits_match_an_aiohttp_upstream(
    raw: RawClient, upstream: EchoUpstream
) -> None:
    # 8 KiB passes (club-api runs aiohttp's 8190-byte default, so does the proxy)...
    await exchange(raw, request(headers=[("Cookie", "c=" + "x" * 8000)]))
    assert len(upstream.received[-1].header("Cookie") or "") == 8002
    # ...and above the limit the client gets a 4xx, never a 500, and nothing is forwarded.
    await raw.send(request(headers=[("Cookie", "c=" + "x" * 16 * 1024)]))
    response = await raw.read_response()
    assert 400 <= response.status < 500
    assert len(upstream.received) == 1
