"""Forwarding headers and the proxies we trust (`proxy.core.headers.ForwardingPolicy`).

A request from a peer inside a `trusted_proxies` network keeps the forwarding
headers the proxy in front set: X-Forwarded-For is extended with the peer,
the others pass as sent. From any other peer the proxy's own values replace
them, and the client-address headers other proxies set are dropped. Both
request paths are driven over loopback (the client is 127.0.0.1): a bodiless
GET stays in the fast lane (`proxy.fastlane.call`), a POST with a body is handed
to aiohttp's path (`proxy.webpath.relay`); each test checks which one ran.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.core.headers import ForwardingPolicy, upstream_request_headers
from proxy.serving.app import PROXY, create_app
from tests.proxy import forward_support
from tests.proxy.forward_support import RawClient, legacy_routes, request, serve_proxy

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from pathlib import Path

    from aiohttp import web

    from proxy.serving.protocol import ProxyAppRunner
    from tests.proxy.echo_upstream import EchoUpstream, Received

# The shared fixture of the forwarding tests.
upstream = forward_support.upstream

TRUSTED = ("127.0.0.0/8",)  # the test client's address
OTHERS = ("10.0.0.0/8",)  # a trust list without it

# Headers other proxies set to tell the upstream who the client is, or what
# it asked for (Traefik drops the same ones from untrusted peers: its
# CVE-2024-52003 was X-Forwarded-Prefix). Name, the value a client sends.
CLIENT_ADDRESS_HEADERS = [
    ("X-Real-IP", "203.0.113.66"),
    ("X-Client-IP", "203.0.113.66"),
    ("X-Forwarded-Port", "443"),
    ("X-Forwarded-Prefix", "/admin"),
    ("X-Forwarded-Server", "edge.example"),
    ("X-Forwarded-Scheme", "https"),
    ("X-Scheme", "https"),
    ("X-Forwarded-Uri", "/admin/x"),
    ("X-Forwarded-Method", "DELETE"),
    ("X-Forwarded-Tls-Client-Cert", "MIIB"),
    ("X-Forwarded-Tls-Client-Cert-Info", "Subject%3D%22CN%3Dadmin%22"),
]


@dataclass(frozen=True)
class Way:
    """A request path: the method (with or without a body) that takes it."""

    method: str
    body: bytes

    def request(self, headers: list[tuple[str, str]]) -> bytes:
        return request(self.method, "/echo", headers=headers, body=self.body, host="proxy.test")

    def check_taken(self, app: web.Application) -> None:
        metrics = app[PROXY].metrics
        handoffs = re.findall(
            rb'^club_proxy_fast_lane_handoffs_total\{reason="([^"]+)"\}',
            metrics.render(),
            re.MULTILINE,
        )
        if self.body:
            assert (metrics.fast_lane_requests, handoffs) == (0, [b"body"])
        else:
            assert (metrics.fast_lane_requests, handoffs) == (1, [])


WAYS = pytest.mark.parametrize(
    "way", [Way("GET", b""), Way("POST", b"payload")], ids=["fast-lane", "aiohttp-path"]
)

Relay: TypeAlias = "Callable[[tuple[str, ...], Way, list[tuple[str, str]]], Awaitable[Received]]"


@pytest.fixture
async def relay(upstream: EchoUpstream, tmp_path: Path) -> AsyncIterator[Relay]:
    """Send one request through a proxy trusting `trusted`; what the upstream received."""
    runners: list[ProxyAppRunner] = []

    async def send(trusted: tuple[str, ...], way: Way, headers: list[tuple[str, str]]) -> Received:
        routes = legacy_routes(tmp_path, upstream.url)
        app = create_app(routes_path=routes, trusted_proxies=trusted, reload_on_sighup=False)
        runner, port = await serve_proxy(app)
        runners.append(runner)
        client = await RawClient.connect(port)
        try:
            await client.send(way.request(headers))
            assert (await client.read_response()).status == 200
        finally:
            await client.close()
        way.check_taken(app)
        return upstream.received[-1]

    yield send
    for runner in runners:
        await runner.cleanup()


# --- a peer we trust ---------------------------------------------------------------


@WAYS
@pytest.mark.parametrize(
    "xff",
    [
        [("X-Forwarded-For", "203.0.113.7, 198.51.100.9")],  # one line
        [("X-Forwarded-For", "203.0.113.7"), ("X-Forwarded-For", "198.51.100.9")],  # two
    ],
    ids=["one-line", "two-lines"],
)
async def test_a_trusted_proxys_x_forwarded_for_is_extended_with_the_peer(
    relay: Relay, way: Way, xff: list[tuple[str, str]]
) -> None:
    seen = await relay(TRUSTED, way, xff)
    assert seen.all("X-Forwarded-For") == ["203.0.113.7, 198.51.100.9, 127.0.0.1"]


@WAYS
async def test_a_trusted_proxys_forwarding_headers_are_kept(relay: Relay, way: Way) -> None:
    sent = [
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "club.example"),
        ("Forwarded", "for=203.0.113.7;proto=https"),
        *CLIENT_ADDRESS_HEADERS,
    ]
    seen = await relay(TRUSTED, way, sent)
    for name, value in sent:
        assert seen.all(name) == [value], name
    # No X-Forwarded-For came in: the peer starts the list.
    assert seen.all("X-Forwarded-For") == ["127.0.0.1"]


# --- any other peer ----------------------------------------------------------------


@WAYS
@pytest.mark.parametrize("trusted", [(), OTHERS], ids=["no-trust-list", "peer-not-listed"])
async def test_an_untrusted_peers_forwarding_headers_are_replaced(
    relay: Relay, way: Way, trusted: tuple[str, ...]
) -> None:
    spoof = [
        ("X-Forwarded-For", "203.0.113.7, 198.51.100.9"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "evil.example"),
        ("Forwarded", "for=203.0.113.7;proto=https"),
    ]
    seen = await relay(trusted, way, spoof)
    assert seen.all("X-Forwarded-For") == ["127.0.0.1"]
    assert seen.all("X-Forwarded-Proto") == ["http"]
    assert seen.all("X-Forwarded-Host") == ["proxy.test"]
    assert seen.all("Forwarded") == []


@WAYS
@pytest.mark.parametrize(("name", "value"), CLIENT_ADDRESS_HEADERS)
async def test_client_address_headers_from_an_untrusted_peer_are_dropped(
    relay: Relay, way: Way, name: str, value: str
) -> None:
    # Any case: header names are case-insensitive, and so is the drop.
    seen = await relay(OTHERS, way, [(name, value), (name.lower(), value), ("X-Kept", "1")])
    assert seen.all(name) == []
    assert seen.all("X-Kept") == ["1"]


@pytest.mark.parametrize("trusted", [True, False])
def test_headers_for_in_process_and_websocket_targets_follow_the_same_rules(
    trusted: bool,
) -> None:
    # `upstream_request_headers` (the multidict twin of the byte rules above).
    policy = ForwardingPolicy.from_cidrs(["10.0.0.0/8"])
    sent = CIMultiDictProxy(CIMultiDict([("Host", "proxy.test"), *CLIENT_ADDRESS_HEADERS]))
    out = upstream_request_headers(
        sent,
        policy=policy,
        peer="10.1.2.3" if trusted else "192.0.2.1",
        scheme="http",
        request_id="rid-1",
    )
    for name, value in CLIENT_ADDRESS_HEADERS:
        assert out.getall(name, []) == ([value] if trusted else [])


# --- who is trusted ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("cidrs", "peer", "trusted"),
    [
        (["10.0.0.0/8"], "10.1.2.3", True),  # plain IPv4
        (["10.0.0.0/8"], "::ffff:10.1.2.3", True),  # the same peer on a dual-stack socket
        (["10.0.0.0/8"], "::FFFF:10.1.2.3", True),  # in capitals
        (["10.0.0.0/8"], "::ffff:192.0.2.1", False),  # mapped, outside the network
        (["10.0.0.0/8"], "::10.1.2.3", False),  # IPv4-compatible (deprecated), not mapped
        (["10.0.0.0/8"], "64:ff9b::a01:203", False),  # NAT64 of 10.1.2.3: another host
        (["::ffff:10.0.0.0/104"], "::ffff:10.1.2.3", True),  # a mapped network still matches
        (["127.0.0.1"], "::ffff:127.0.0.1", True),  # a single address
        (["2001:db8::/32"], "2001:db8::1", True),  # plain IPv6
        (["2001:db8::/32"], "::ffff:10.1.2.3", False),
        (["10.0.0.0/8"], "not-an-address", False),
        (["10.0.0.0/8"], None, False),  # a Unix socket has no peer address
    ],
)
def test_trust_is_decided_on_the_peers_address(
    cidrs: list[str], peer: str | None, trusted: bool
) -> None:
    policy = ForwardingPolicy.from_cidrs(cidrs)
    assert policy.is_trusted(peer) is trusted
    # Asked again: the answer is cached per peer string, and must not change.
    assert policy.is_trusted(peer) is trusted
