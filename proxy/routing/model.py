"""The route table: what routes.yaml means, as immutable values.

`proxy.routing.table` builds a `RouteTable` of these from the file and owns
matching; everything else in the proxy only reads them. A table is never
mutated: a reload builds a new one and swaps it whole.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

    from yarl import URL

__all__ = [
    "DEFAULT_SEND_TIMEOUT",
    "NEW",
    "SAFE_METHODS",
    "Canary",
    "Capture",
    "NewTarget",
    "Route",
    "RouteMatch",
    "Shadow",
    "ShadowStore",
    "Sticky",
    "StickyKind",
    "Timeouts",
    "Upstream",
    "Verdict",
]

# The target name of the new side; every other target names an upstream.
NEW = "new"
# The methods a shadow copy may repeat: a copy of anything else would write twice.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# nginx's send_timeout default; also for answers no upstream covers (in-process `new`).
DEFAULT_SEND_TIMEOUT = 60.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Upstream:
    """An HTTP upstream (the legacy club-api, or any other backend) and its pool."""

    name: str
    url: URL
    connect_timeout: float = 2.0
    read_timeout: float = 30.0
    max_connections: int = 100
    # Below the upstream's own keep-alive timeout (aiohttp's server default is 75 s),
    # so the proxy never reuses a connection the upstream is about to close.
    keepalive_timeout: float = 15.0
    # Above aiohttp's 4 MiB default, so the proxy is not the hop that refuses
    # a message club-api (or its client) would take; a message is held whole
    # per hop, so this bounds the memory one socket can take.
    ws_max_message_size: int = 16 * 1024 * 1024
    # nginx's request buffering: a request body up to this size is read whole
    # before an upstream connection is taken, so a slow client holds no pooled
    # connection (0: stream every body). Larger bodies stream.
    request_buffering: int = 1024 * 1024
    # nginx's client_body_timeout: the longest wait for the next body bytes.
    client_body_timeout: float = 60.0
    # nginx's send_timeout: the longest a client may leave the answer unread.
    send_timeout: float = DEFAULT_SEND_TIMEOUT


@dataclass(frozen=True, slots=True, kw_only=True)
class NewTarget:
    """Where `to: new` goes: an in-process app factory or an out-of-process URL."""

    app: str | None = None  # "module:factory"
    url: URL | None = None
    config_dir: Path | None = None  # legacy config handed to the factory as Settings


class StickyKind(enum.Enum):
    HEADER = "header"
    COOKIE = "cookie"


@dataclass(frozen=True, slots=True, kw_only=True)
class Sticky:
    kind: StickyKind
    name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Canary:
    """Send `weight` (0..1) of a route's traffic to `to`, optionally sticky per client."""

    to: str
    weight: float
    sticky: Sticky | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    """When a shadowed route is ready: `min_match` of at least `min_requests` compared."""

    min_requests: int = 1000
    min_match: float = 0.999


@dataclass(frozen=True, slots=True, kw_only=True)
class Shadow:
    """Copy `sample` of a route's safe requests to `to` and compare the answers.

    `ignore_headers` are lower-case names added to the engine's defaults;
    `ignore_json`, `unordered` and `redact_json` are JSON path patterns
    (`proxy.shadow.model.CompareRules`); `noise` is the share of copied
    requests also sent to the primary a second time (Diffy's secondary).
    """

    to: str
    sample: float = 1.0
    sticky: Sticky | None = None
    ignore_headers: frozenset[str] = frozenset()
    ignore_json: tuple[str, ...] = ()
    unordered: tuple[str, ...] = ()
    noise: float = 0.1
    max_body: int = 1024 * 1024
    timeout: float = 5.0
    verdict: Verdict = field(default_factory=Verdict)
    redact_headers: frozenset[str] = frozenset()
    redact_json: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Capture:
    """Record `sample` of a route's exchanges to `file`, one JSON line each, secrets masked.

    `file` is absolute (relative paths are anchored at the routes file); it is
    rotated to `<file>.1` at `max_size`. `redact_*` are masked besides
    Authorization, Proxy-Authorization, Cookie and Set-Cookie values.
    """

    file: Path
    sample: float = 0.01
    max_body: int = 256 * 1024
    max_size: int = 1024 * 1024 * 1024
    redact_headers: frozenset[str] = frozenset()
    redact_query: frozenset[str] = frozenset()
    redact_json: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ShadowStore:
    """The PostgreSQL where shadow results of every replica go (`shadow_store:`)."""

    dsn: str
    retention: float = 14 * 86400.0  # seconds a difference group is kept after it was last seen
    flush_interval: float = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Timeouts:
    """Per-route overrides of the upstream timeouts (None: the upstream's own)."""

    connect: float | None = None
    read: float | None = None
    client_body: float | None = None
    send: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    id: str
    methods: frozenset[str]  # empty: every method
    path: str  # the pattern as written, e.g. "/api/users/{id}"
    to: str
    canary: Canary | None = None
    timeouts: Timeouts = field(default_factory=Timeouts)
    # Overrides the upstream's `request_buffering` (0: stream every body).
    request_buffering: int | None = None
    shadow: Shadow | None = None
    capture: Capture | None = None
    line: int = 0  # where the route starts in routes.yaml, for messages
    # Answers carry `X-Club-Target: <target>` (the route's `expose_target:`,
    # else the file's top-level one).
    expose_target: bool = False
    # Whether a request path must watch the answer (a shadow or a capture):
    # the one test routes without either pay.
    tapped: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tapped", self.shadow is not None or self.capture is not None)


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteMatch:
    """The result of matching one request; `route` is None when `default` applied."""

    route: Route | None
    target: str
    params: Mapping[str, str]
