"""Header rules of a gateway: what is removed, what the proxy adds, whom it trusts.

Requests going upstream lose every hop-by-hop header and every header named in
their `Connection` field *before* the proxy adds its own (`Via`,
`X-Forwarded-For/Proto/Host`, `X-Request-ID`), so a client cannot use a
`Connection` token to delete what the proxy sets (Traefik CVE-2024-45410).
Client-supplied forwarding headers (X-Forwarded-*, Forwarded, X-Real-IP and
the like) are kept only from trusted proxies.
Responses lose hop-by-hop headers too; everything else passes untouched, in
order, duplicates (`Set-Cookie`) included.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, TypeAlias

from multidict import CIMultiDict

from proxy.core.request_ids import REQUEST_ID, request_id_from

if TYPE_CHECKING:
    from collections.abc import Iterable

    from aiohttp.http import RawResponseMessage
    from multidict import CIMultiDictProxy

__all__ = [
    "HOP_BY_HOP",
    "TARGET_HEADER",
    "ForwardingPolicy",
    "Framing",
    "IPNetwork",
    "client_head",
    "request_id_from",
    "response_head",
    "response_headers",
    "upstream_request_head",
    "upstream_request_headers",
    "valid_host",
]

IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

# RFC 9110 §7.6.1 plus the legacy ones every proxy strips (Keep-Alive,
# Proxy-Connection, Trailer); `Upgrade` is handled by the WebSocket relay.
HOP_BY_HOP: Final = (
    "Connection",
    "Keep-Alive",
    "Proxy-Connection",
    "Proxy-Authenticate",
    "Proxy-Authorization",
    "TE",
    "Trailer",
    "Transfer-Encoding",
    "Upgrade",
)
# The proxy answers `Expect: 100-continue` itself (aiohttp does it when the
# route matches), so the upstream must not see it.
# HTTP2-Settings belongs to an h2c upgrade, which the proxy never performs
# (RFC 9113 §3.2.1 calls it hop-by-hop).
# X-Club-Force-Target is for the proxy alone (`proxy.core.decision`), trusted or not.
_REQUEST_DROP: Final = (
    *HOP_BY_HOP,
    "Expect",
    "X-Request-ID",
    "HTTP2-Settings",
    "X-Club-Force-Target",
)
# The response header naming the side that answered (routes.yaml `expose_target:`).
TARGET_HEADER: Final = "X-Club-Target"
# Only meaningful from a proxy we trust; from anyone else they are spoofing.
# The first four the proxy sets itself; the rest name the client's address,
# port, scheme, path prefix or certificate for an upstream that believes them
# (Traefik drops the same set from untrusted peers: its CVE-2024-52003 was
# X-Forwarded-Prefix).
_FORWARDING: Final = (
    "X-Forwarded-For",
    "X-Forwarded-Proto",
    "X-Forwarded-Host",
    "Forwarded",
    "X-Real-IP",
    "X-Client-IP",
    "X-Forwarded-Port",
    "X-Forwarded-Prefix",
    "X-Forwarded-Server",
    "X-Forwarded-Scheme",
    "X-Scheme",
    "X-Forwarded-Uri",
    "X-Forwarded-Method",
    "X-Forwarded-Tls-Client-Cert",
    "X-Forwarded-Tls-Client-Cert-Info",
)

# A `Connection` token may not remove these: without Host the upstream would
# see the proxy's idea of the authority, without Content-Length a new framing.
_PROTECTED: Final = frozenset({"host", "content-length"})
# The same rules over raw header bytes, for `upstream_request_head`.
_LOWER_DROP: Final = frozenset(n.lower().encode() for n in _REQUEST_DROP)
_LOWER_FORWARDING: Final = frozenset(n.lower().encode() for n in _FORWARDING)
_LOWER_PROTECTED: Final = frozenset(n.encode() for n in _PROTECTED)
# Methods whose requests carry no content by definition; for the others aiohttp's
# client sent `Content-Length: 0` when there was no body, and so do we.
_BODILESS_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
_TRUST_CACHE_SIZE: Final = 4096
_CACHED_TOKENS_MAX: Final = 64
_LOWER_HOP_BY_HOP: Final = frozenset(n.lower().encode() for n in HOP_BY_HOP)
_LOWER_TARGET: Final = frozenset({TARGET_HEADER.lower().encode()})
# Statuses whose answers have no body; aiohttp's server also drops their
# Content-Length (`should_remove_content_length`), and so does the fast lane.
_NO_BODY_STATUSES: Final = frozenset({204, 304})


# RFC 9112 §3.2 and RFC 3986 §3.2.2: `uri-host [":" port]`, without user
# info. A comma (a list of hosts), a path, spaces or an empty value are 400
# (nginx refuses them too): the upstream and X-Forwarded-Host would read them
# their own way. `,` is a reg-name character by the grammar but never a host.
_HOST_VALUE: Final = re.compile(
    r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~!$&'()*+;=%-]+)(?::[0-9]{0,5})?"
)


def valid_host(value: str | None) -> bool:
    """Whether a request's `Host` value names one host (and port); None (absent) is allowed."""
    return value is None or _HOST_VALUE.fullmatch(value) is not None


@dataclass(frozen=True, slots=True, kw_only=True)
class ForwardingPolicy:
    """How the proxy names itself and which peers may set forwarding headers.

    Attributes:
        trusted: networks of proxies in front of us whose forwarding headers
            are kept (X-Forwarded-For extended with the peer); from other
            peers X-Forwarded-For/Proto/Host are replaced and the rest
            (Forwarded, X-Real-IP, X-Forwarded-Port/Prefix/...) dropped. An
            IPv4 peer seen on a dual-stack socket (`::ffff:10.0.0.1`) is
            matched as the IPv4 address it is.
        pseudonym: the `Via` name (RFC 9110 §7.6.3); seeing it on an inbound
            request means a routing loop.
        underscores_in_headers: keep request header names with `_`. Off by
            default, as nginx's `underscores_in_headers off`: servers that
            fold `_` into `-` (several WSGI servers) would read
            `X_Forwarded_For` as the proxy's own `X-Forwarded-For`.
    """

    trusted: tuple[IPNetwork, ...] = ()
    pseudonym: str = "club-proxy"
    underscores_in_headers: bool = False
    via: str = field(init=False)
    via_bytes: bytes = field(init=False, repr=False, compare=False)
    _trust_cache: dict[str, bool] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.pseudonym or not REQUEST_ID.fullmatch(self.pseudonym):
            msg = f"Via pseudonym {self.pseudonym!r} must match [A-Za-z0-9._-]{{1,128}}"
            raise ValueError(msg)
        object.__setattr__(self, "via", f"1.1 {self.pseudonym}")
        object.__setattr__(self, "via_bytes", self.via.encode())
        object.__setattr__(self, "_trust_cache", {})

    @classmethod
    def from_cidrs(
        cls,
        cidrs: Iterable[str],
        *,
        pseudonym: str = "club-proxy",
        underscores_in_headers: bool = False,
    ) -> ForwardingPolicy:
        """A policy trusting the given CIDRs (`10.0.0.0/8`, `::1`)."""
        nets = tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)
        return cls(trusted=nets, pseudonym=pseudonym, underscores_in_headers=underscores_in_headers)

    def is_trusted(self, peer: str | None) -> bool:
        """Whether `peer` (an IP address string) is one of our trusted proxies."""
        if not self.trusted or peer is None:
            return False
        cache = self._trust_cache
        known = cache.get(peer)
        if known is None:
            try:
                address = ipaddress.ip_address(peer)
            except ValueError:
                known = False
            else:
                known = _within(address, self.trusted)
            if len(cache) >= _TRUST_CACHE_SIZE:
                cache.clear()
            cache[peer] = known
        return known

    def is_loop(self, headers: CIMultiDictProxy[str]) -> bool:
        """Whether an inbound request already passed through this proxy."""
        for value in headers.getall("Via", ()):
            if self.pseudonym in value:
                for entry in value.split(","):
                    parts = entry.split()
                    if len(parts) >= 2 and parts[1] == self.pseudonym:  # noqa: PLR2004
                        return True
        return False


def _within(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, nets: tuple[IPNetwork, ...]
) -> bool:
    # A dual-stack socket reports an IPv4 peer as `::ffff:a.b.c.d` (RFC 4291
    # §2.5.5.2), which no IPv4 network contains: try the IPv4 address too.
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return any(address in net or (mapped is not None and mapped in net) for net in nets)


def _connection_tokens(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> list[str]:
    tokens: list[str] = []
    for value in headers.getall("Connection", ()):
        tokens.extend(t.strip() for t in value.split(","))
    return [t for t in tokens if t and t.lower() not in _PROTECTED]


def upstream_request_headers(
    headers: CIMultiDictProxy[str],
    *,
    policy: ForwardingPolicy,
    peer: str | None,
    scheme: str,
    request_id: str,
) -> CIMultiDict[str]:
    """The headers to send upstream: the client's, cleaned, plus the proxy's own.

    `Host` is kept as the client sent it. Hop-by-hop headers, the ones named in
    `Connection`, `Expect` and the client's X-Request-ID are removed first.
    """
    out = CIMultiDict(headers)
    if "Connection" in out:
        for token in _connection_tokens(out):
            out.popall(token, None)
    _drop_requested(out, policy)
    via = out.popall("Via", None)
    out["Via"] = f"{', '.join(via)}, {policy.via}" if via else policy.via
    trusted = policy.is_trusted(peer)
    xff = out.popall("X-Forwarded-For", None) if trusted else None
    if not trusted:
        for name in _FORWARDING:
            out.popall(name, None)
    if peer is not None:
        out["X-Forwarded-For"] = f"{', '.join(xff)}, {peer}" if xff else peer
    if "X-Forwarded-Proto" not in out:
        out["X-Forwarded-Proto"] = scheme
    if "X-Forwarded-Host" not in out and (host := headers.get("Host")) is not None:
        out["X-Forwarded-Host"] = host
    out["X-Request-ID"] = request_id
    return out


def _drop_requested(out: CIMultiDict[str], policy: ForwardingPolicy) -> None:
    """Remove the request headers no upstream may see (names with `_` unless allowed)."""
    for name in _REQUEST_DROP:
        out.popall(name, None)
    if not policy.underscores_in_headers:
        for name in [n for n in out if "_" in n]:
            out.popall(name, None)


def response_headers(
    headers: CIMultiDictProxy[str], *, request_id: str, target: str | None = None
) -> CIMultiDict[str]:
    """The upstream response headers minus hop-by-hop ones, plus the request id.

    With a `target`, `X-Club-Target: <target>` too (replacing the upstream's).

    A stray `Content-Length` next to `Transfer-Encoding` is dropped: the body
    was de-chunked by the client and aiohttp re-frames it (RFC 9112 §6.3).
    """
    out = CIMultiDict(headers)
    if "Connection" in out:
        for token in _connection_tokens(out):
            out.popall(token, None)
    if "Transfer-Encoding" in out:
        out.popall("Content-Length", None)
    for name in HOP_BY_HOP:
        out.popall(name, None)
    out["X-Request-ID"] = request_id
    if target is not None:
        out[TARGET_HEADER] = target
    return out


def _connection_token_bytes(values: Iterable[bytes]) -> frozenset[bytes]:
    tokens = (t.strip().lower() for value in values for t in value.split(b","))
    return frozenset(t for t in tokens if t and t not in _LOWER_PROTECTED)


# `Connection` values seen and their tokens: nearly every answer carries the
# same `keep-alive`, so the split is done once, not per request.
_token_cache: dict[tuple[bytes, ...], frozenset[bytes]] = {}


def _tokens(values: tuple[bytes, ...]) -> frozenset[bytes]:
    """The lower-cased header names `Connection` values list (Host and Content-Length never)."""
    tokens = _token_cache.get(values)
    if tokens is None:
        tokens = _connection_token_bytes(values)
        # Only short values are cached: the client chooses them, and a cache
        # of large ones would be a way to fill the proxy's memory.
        if len(values) == 1 and len(values[0]) <= _CACHED_TOKENS_MAX:
            if len(_token_cache) >= _TRUST_CACHE_SIZE:
                _token_cache.clear()
            _token_cache[values] = tokens
    return tokens


def _dropped_by_connection(
    drop: frozenset[bytes], names: list[bytes], raw: tuple[tuple[bytes, bytes], ...]
) -> frozenset[bytes]:
    """`drop` plus the header names the `Connection` fields of `raw` list."""
    first = names.index(b"connection")
    if names.count(b"connection") == 1:
        values: tuple[bytes, ...] = (raw[first][1],)
    else:
        values = tuple(v for n, (_, v) in zip(names, raw, strict=True) if n == b"connection")
    tokens = _tokens(values)
    return drop if tokens <= drop else drop | tokens


# What `upstream_request_head` does with each request header, by lower-cased
# name: one dict lookup per header; names not listed are passed on as sent.
_DROP: Final = 0
_HOST: Final = 1
_VIA: Final = 2
_XFF: Final = 3
_XFP: Final = 4
_XFH: Final = 5
_LENGTH: Final = 6
_CONNECTION: Final = 7
_TRUSTED_KINDS: Final[dict[bytes, int]] = {
    **dict.fromkeys(_LOWER_DROP, _DROP),
    b"connection": _CONNECTION,
    b"host": _HOST,
    b"via": _VIA,
    b"x-forwarded-for": _XFF,
    b"x-forwarded-proto": _XFP,
    b"x-forwarded-host": _XFH,
    b"content-length": _LENGTH,
}
_UNTRUSTED_KINDS: Final[dict[bytes, int]] = {
    **_TRUSTED_KINDS,
    **dict.fromkeys(_LOWER_FORWARDING, _DROP),
}


def upstream_request_head(
    method: str,
    target: str,
    raw_headers: tuple[tuple[bytes, bytes], ...],
    *,
    policy: ForwardingPolicy,
    peer: str | None,
    scheme: str,
    request_id: str,
    default_host: str,
    body: bool,
) -> tuple[bytes, bool]:
    """The request head to send upstream as bytes, and whether the body goes chunked.

    The same rules as `upstream_request_headers`, applied to the client's raw
    header bytes, so names, values and order reach the upstream exactly as
    sent: `Host` first (RFC 9112 §3.2; `default_host` when an HTTP/1.0 client
    sent none), the remaining client headers in order, then `Via`,
    `X-Forwarded-For/Proto/Host` and `X-Request-ID`, then the framing: the
    client's `Content-Length`, or `Transfer-Encoding: chunked` for a body of
    unknown length, or `Content-Length: 0` for a bodiless POST, PUT, PATCH,
    DELETE or unknown method. `target` must be the raw request target.
    """
    kinds = _TRUSTED_KINDS if policy.is_trusted(peer) else _UNTRUSTED_KINDS
    via = policy.via_bytes
    underscores = policy.underscores_in_headers
    head = _request_head(
        method,
        target,
        raw_headers,
        kinds,
        via,
        peer,
        scheme,
        request_id,
        default_host,
        body,
        underscores,
    )
    if head is None:
        # A `Connection` field names headers to drop beyond the usual ones
        # (rare): once more, with those dropped too, wherever they stand.
        values = tuple(v for n, v in raw_headers if n.lower() == b"connection")
        kinds = {**kinds, **dict.fromkeys(_tokens(values), _DROP)}
        head = _request_head(
            method,
            target,
            raw_headers,
            kinds,
            via,
            peer,
            scheme,
            request_id,
            default_host,
            body,
            underscores,
        )
        assert head is not None  # noqa: S101 - every listed name is dropped now
    return head


def _request_head(  # noqa: C901, PLR0912, PLR0917 - one pass over the headers, on every request's path
    method: str,
    target: str,
    raw_headers: tuple[tuple[bytes, bytes], ...],
    kinds: dict[bytes, int],
    via_ours: bytes,
    peer: str | None,
    scheme: str,
    request_id: str,
    default_host: str,
    body: bool,  # noqa: FBT001 - private, positional for speed
    underscores: bool,  # noqa: FBT001
) -> tuple[bytes, bool] | None:
    """`upstream_request_head` with the drop rules in `kinds`; None when a
    `Connection` field names a header `kinds` does not drop."""
    host: bytes | None = None
    via: list[bytes] = []
    xff: list[bytes] = []
    has_length = has_proto = has_fhost = False
    lines = [f"{method} {target} HTTP/1.1\r\n".encode("utf-8", "surrogateescape"), b""]
    for name, value in raw_headers:
        kind = kinds.get(name.lower())
        if kind is None:
            if b"_" in name and not underscores:
                continue  # see ForwardingPolicy.underscores_in_headers
            lines += (name, b": ", value, b"\r\n")
        elif kind == _DROP:
            continue
        elif kind == _HOST:
            host = value
        elif kind == _VIA:
            via.append(value)
        elif kind == _XFF:
            # Only from a trusted peer (dropped otherwise): extended below.
            xff.append(value)
        elif kind == _CONNECTION:
            if any(kinds.get(token) != _DROP for token in _tokens((value,))):
                return None
        else:
            if kind == _LENGTH:
                has_length = True
            elif kind == _XFP:
                has_proto = True
            else:
                has_fhost = True
            lines += (name, b": ", value, b"\r\n")
    lines[1] = b"Host: %b\r\n" % (host if host is not None else default_host.encode("idna"))
    via.append(via_ours)
    lines += (b"Via: ", b", ".join(via), b"\r\n")
    if peer is not None:
        xff.append(peer.encode())
        lines += (b"X-Forwarded-For: ", b", ".join(xff), b"\r\n")
    if not has_proto:
        lines += (b"X-Forwarded-Proto: ", scheme.encode(), b"\r\n")
    if not has_fhost and host is not None:
        lines += (b"X-Forwarded-Host: ", host, b"\r\n")
    lines += (b"X-Request-ID: ", request_id.encode(), b"\r\n")
    chunked = body and not has_length
    if chunked:
        lines.append(b"Transfer-Encoding: chunked\r\n")
    elif not body and not has_length and method not in _BODILESS_METHODS:
        lines.append(b"Content-Length: 0\r\n")
    lines.append(b"\r\n")
    return b"".join(lines), chunked


class Framing(enum.Enum):
    """How the body of a relayed answer is framed towards the client."""

    EMPTY = "empty"  # HEAD, 1xx, 204 and 304: no body whatever the headers say
    LENGTH = "length"  # the upstream's Content-Length, body bytes as they come
    CHUNKED = "chunked"  # no length known: chunked, as aiohttp frames it


def response_head(
    message: RawResponseMessage,
    *,
    method: str,
    request_id: bytes,
    date: bytes,
    target: bytes | None = None,
) -> tuple[bytes, Framing]:
    """The answer head for the client as bytes, and how its body is framed.

    The same rules as `response_headers` plus what aiohttp's StreamResponse
    adds for a `PassThroughResponse` (`client_head`), applied to what
    aiohttp's parser read.
    """
    raw = message.raw_headers
    return client_head(
        message.code,
        message.reason.encode("utf-8", "surrogateescape"),
        raw,
        [name.lower() for name, _ in raw],
        method=method,
        request_id=request_id,
        date=date,
        target=target,
    )


def client_head(  # noqa: C901, PLR0912 - one pass over the headers, as upstream_request_head
    code: int,
    reason: bytes,
    raw: tuple[tuple[bytes, bytes], ...],
    names: list[bytes],
    *,
    method: str,
    request_id: bytes,
    date: bytes,
    target: bytes | None = None,
) -> tuple[bytes, Framing]:
    """The answer head for the client from the upstream's raw head, and its framing.

    `raw` holds the upstream's header (name, value) pairs as sent, `names`
    the same names lower-cased. Hop-by-hop headers and those named in
    `Connection` go, a `Content-Length` beside `Transfer-Encoding` or on a
    1xx, 204 or 304 goes (as aiohttp's server drops it), `X-Request-ID`
    takes the place of the upstream's (or comes last), then
    `Transfer-Encoding: chunked` when no length is known and `Date` when the
    upstream sent none. With a `target`, the upstream's `X-Club-Target` goes
    and `X-Club-Target: <target>` follows `X-Request-ID`. Names, values and
    order are kept as sent. The status
    line is HTTP/1.1: only HTTP/1.1 clients get here (`proxy.fastlane.lane`).
    """
    drop = _LOWER_HOP_BY_HOP
    if b"connection" in names:
        drop = _dropped_by_connection(drop, names, raw)
    if target is not None:
        drop |= _LOWER_TARGET
    informational = code < 200  # noqa: PLR2004
    empty = method == "HEAD" or informational or code in _NO_BODY_STATUSES
    drop_length = b"transfer-encoding" in names or informational or code in _NO_BODY_STATUSES
    lines = [b"HTTP/1.1 %d %b\r\n" % (code, reason)]
    has_length = has_date = has_id = False
    for lname, (name, value) in zip(names, raw, strict=True):
        if lname in drop:
            continue
        if lname == b"content-length":
            if drop_length:
                continue
            has_length = True
        elif lname == b"x-request-id":
            if has_id:
                continue
            has_id = True
            lines.append(b"%b: %b\r\n" % (name, request_id))
            continue
        elif lname == b"date":
            has_date = True
        lines.append(b"%b: %b\r\n" % (name, value))
    if not has_id:
        lines.append(b"X-Request-ID: %b\r\n" % request_id)
    if target is not None:
        lines.append(b"X-Club-Target: %b\r\n" % target)
    if empty:
        framing = Framing.EMPTY
    elif has_length:
        framing = Framing.LENGTH
    else:
        framing = Framing.CHUNKED
        lines.append(b"Transfer-Encoding: chunked\r\n")
    if not has_date:
        lines.append(b"Date: %b\r\n" % date)
    lines.append(b"\r\n")
    return b"".join(lines), framing
