"""routes.yaml → an immutable `RouteTable`, and matching against it.

`load_routes(path)` reads and validates the whole file (schema version 1,
docs/routes.md) and raises `RoutesError` listing every problem with file, line
and key; nothing is half-built. `RouteTable.match(method, raw_path)` is called
on every request: it normalises the path and uses the precompiled `_matcher`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from yarl import URL

from proxy.errors import RoutesError
from proxy.routing._schema import SCHEMA_VERSION, parse_document
from proxy.routing.model import NEW

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

    from proxy.routing._matcher import Matcher
    from proxy.routing.model import NewTarget, Route, RouteMatch, Shadow, ShadowStore, Upstream

__all__ = ["RouteTable", "load_routes", "parse_routes"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteTable:
    """One validated routes.yaml, never mutated: a reload builds and swaps a new one."""

    version: int
    upstreams: Mapping[str, Upstream]
    new: NewTarget | None
    default: str
    routes: tuple[Route, ...]
    source: Path
    digest: str  # sha256 hex of the file bytes
    _matcher: Matcher = field(repr=False, compare=False)
    shadow_store: ShadowStore | None = None
    # The top-level `expose_target:`: answers of the `default` target carry
    # `X-Club-Target` (each route carries its own `Route.expose_target`).
    expose_target: bool = False

    def match(self, method: str, raw_path: str) -> RouteMatch:
        """Route a request: `raw_path` is ``request.raw_path`` without the query."""
        return self._matcher.match(method, raw_path)

    @property
    def targets(self) -> frozenset[str]:
        return frozenset(self.upstreams) | ({NEW} if self.new is not None else set())

    @property
    def uses_new(self) -> bool:
        """Some request can reach `new`: a route, a canary share or the default."""
        return self.default == NEW or any(
            route.to == NEW
            or (route.canary is not None and route.canary.to == NEW)
            or (route.shadow is not None and route.shadow.to == NEW)
            for route in self.routes
        )

    @property
    def shadows(self) -> dict[str, Shadow]:
        """Route id -> its `shadow:`, for the shadowed routes."""
        return {route.id: route.shadow for route in self.routes if route.shadow is not None}

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (for the admin API)."""
        return {
            "version": self.version,
            "source": str(self.source),
            "digest": self.digest,
            "default": self.default,
            "upstreams": {name: str(up.url) for name, up in self.upstreams.items()},
            "new": _describe_new(self.new),
            "routes": [_describe_route(route) for route in self.routes],
            "shadow_store": _describe_store(self.shadow_store),
            "expose_target": self.expose_target,
        }


def load_routes(path: Path) -> RouteTable:
    """Read and validate a routes file (RoutesError with every problem found)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        msg = f"cannot read the routes file: {exc.strerror or exc}"
        raise RoutesError(msg, path=path) from exc
    return parse_routes(data, path)


def parse_routes(data: bytes, source: Path) -> RouteTable:
    """Validate routes.yaml content read from `source` (which anchors relative paths)."""
    document = parse_document(data, source)
    return RouteTable(
        version=SCHEMA_VERSION,
        upstreams=MappingProxyType(document.upstreams),
        new=document.new,
        default=document.default,
        routes=document.routes,
        source=source,
        digest=hashlib.sha256(data).hexdigest(),
        _matcher=document.matcher,
        shadow_store=document.shadow_store,
        expose_target=document.expose_target,
    )


def _describe_new(new: NewTarget | None) -> dict[str, str | None] | None:
    if new is None:
        return None
    config_dir = str(new.config_dir) if new.config_dir is not None else None
    return {"app": new.app, "url": str(new.url) if new.url else None, "config_dir": config_dir}


def _describe_route(route: Route) -> dict[str, Any]:
    described: dict[str, Any] = {
        "id": route.id,
        "methods": sorted(route.methods),
        "path": route.path,
        "to": route.to,
        "line": route.line,
    }
    if (canary := route.canary) is not None:
        sticky = f"{canary.sticky.kind.value}:{canary.sticky.name}" if canary.sticky else None
        described["canary"] = {"to": canary.to, "weight": canary.weight, "sticky": sticky}
    timeouts = route.timeouts
    described["timeouts"] = {
        "connect": timeouts.connect,
        "read": timeouts.read,
        "client_body": timeouts.client_body,
        "send": timeouts.send,
    }
    described["request_buffering"] = route.request_buffering
    described["expose_target"] = route.expose_target
    if (shadow := route.shadow) is not None:
        described["shadow"] = _describe_shadow(shadow)
    return described


def _describe_shadow(shadow: Shadow) -> dict[str, Any]:
    sticky = shadow.sticky
    return {
        "to": shadow.to,
        "sample": shadow.sample,
        "sticky": f"{sticky.kind.value}:{sticky.name}" if sticky else None,
        "ignore": {"headers": sorted(shadow.ignore_headers), "json": list(shadow.ignore_json)},
        "unordered": list(shadow.unordered),
        "noise": shadow.noise,
        "max_body": shadow.max_body,
        "timeout": shadow.timeout,
        "verdict": {
            "min_requests": shadow.verdict.min_requests,
            "min_match": shadow.verdict.min_match,
        },
        "redact": {"headers": sorted(shadow.redact_headers), "json": list(shadow.redact_json)},
    }


def _describe_store(store: ShadowStore | None) -> dict[str, Any] | None:
    if store is None:
        return None
    # Never the password: the admin API is read by people who need no credential.
    dsn = URL(store.dsn)
    shown = str(dsn.with_password("***")) if dsn.password else store.dsn
    return {"dsn": shown, "retention": store.retention, "flush_interval": store.flush_interval}
