"""The routes.yaml schema (version 1): YAML nodes -> validated route values.

Every item is checked on its own, so one pass reports every problem in the file
(`RoutesError.errors`), each with file, line and key. docs/routes.md documents
the keys, their defaults and the rules enforced here.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from yarl import URL

from proxy.errors import RoutesError
from proxy.routing._matcher import Matcher
from proxy.routing._paths import Pattern, parse_pattern
from proxy.routing._yaml import Node, compose
from proxy.routing.jsonpath import parse_json_path
from proxy.routing.model import (
    NEW,
    SAFE_METHODS,
    Canary,
    Capture,
    NewTarget,
    Route,
    Shadow,
    ShadowStore,
    Sticky,
    StickyKind,
    Timeouts,
    Upstream,
    Verdict,
)

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping
    from pathlib import Path

__all__ = ["SCHEMA_VERSION", "Document", "parse_document"]

SCHEMA_VERSION = 1
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_MATCH = re.compile(r"(?:(?P<methods>[^/]*?)\s+)?(?P<path>/\S*)")
_BOOL = "tag:yaml.org,2002:bool"
_VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Document:
    """The validated content of one routes file, ready to become a RouteTable."""

    upstreams: dict[str, Upstream]
    new: NewTarget | None
    default: str
    routes: tuple[Route, ...]
    matcher: Matcher
    shadow_store: ShadowStore | None = None
    expose_target: bool = False


def parse_document(data: bytes, source: Path) -> Document:
    """Validate routes.yaml content read from `source` (which anchors relative paths)."""
    top = compose(data, source).mapping(
        required=("version", "upstreams", "default"),
        optional=("new", "routes", "shadow_store", "expose_target"),
    )
    errors: list[RoutesError] = []
    with _collect(errors):
        if top["version"].integer() != SCHEMA_VERSION:
            msg = f"unsupported schema version {top['version'].raw.value} (this proxy reads 1)"
            raise top["version"].error(msg)
    declared, upstreams = _upstreams(top["upstreams"], errors)
    new = None
    if "new" in top:
        with _collect(errors):
            new = _new(top["new"], source)
    targets = _Targets(declared | ({NEW} if "new" in top else set()))
    default = ""
    with _collect(errors):
        default = targets.check(top["default"])
    expose = False
    if "expose_target" in top:
        with _collect(errors):
            expose = _flag(top["expose_target"])
    routes: list[tuple[int, Route, Pattern]] = []
    if "routes" in top:
        routes = _routes(top["routes"], targets, errors, source, expose=expose)
    matcher = None
    with _collect(errors):
        matcher = Matcher.build(routes, default=default, path=source)
    store = None
    if "shadow_store" in top:
        with _collect(errors):
            store = _shadow_store(top["shadow_store"])
    if errors or matcher is None:
        raise RoutesError.collect(errors)
    return Document(
        upstreams=upstreams,
        new=new,
        default=default,
        routes=tuple(route for _, route, _ in routes),
        matcher=matcher,
        shadow_store=store,
        expose_target=expose,
    )


@contextmanager
def _collect(errors: list[RoutesError]) -> Iterator[None]:
    """Record a RoutesError (all of its problems) and carry on with the next item."""
    try:
        yield
    except RoutesError as exc:
        errors.extend(exc.errors)


@dataclass(frozen=True, slots=True)
class _Targets:
    names: frozenset[str] | set[str]

    def check(self, node: Node) -> str:
        name = node.string()
        if name == NEW and NEW not in self.names:
            msg = "target 'new' needs a top-level 'new:' section"
            raise node.error(msg)
        if name not in self.names:
            known = ", ".join(sorted(self.names)) or "none"
            msg = f"unknown target {name!r} (targets: {known})"
            raise node.error(msg)
        return name


def _upstreams(node: Node, errors: list[RoutesError]) -> tuple[set[str], dict[str, Upstream]]:
    declared: set[str] = set()
    upstreams: dict[str, Upstream] = {}
    with _collect(errors):
        for name, spec in node.entries().items():
            declared.add(name)
            with _collect(errors):
                upstreams[name] = _upstream(name, spec)
    return declared, upstreams


def _upstream(name: str, node: Node) -> Upstream:
    if name == NEW or not _NAME.fullmatch(name):
        msg = f"invalid upstream name {name!r} (letters, digits, '.', '_', '-'; not 'new')"
        raise node.error(msg)
    spec = node.mapping(
        required=("url",),
        optional=(
            "connect_timeout",
            "read_timeout",
            "max_connections",
            "keepalive_timeout",
            "ws_max_message_size",
            "request_buffering",
            "client_body_timeout",
            "send_timeout",
        ),
    )
    kwargs: dict[str, Any] = {"name": name, "url": _url(spec["url"])}
    for key in (
        "connect_timeout",
        "read_timeout",
        "keepalive_timeout",
        "client_body_timeout",
        "send_timeout",
    ):
        if key in spec:
            kwargs[key] = spec[key].duration()
    if "request_buffering" in spec:
        kwargs["request_buffering"] = _buffering(spec["request_buffering"])
    if "max_connections" in spec:
        kwargs["max_connections"] = _positive_int(spec["max_connections"])
    if "ws_max_message_size" in spec:
        kwargs["ws_max_message_size"] = spec["ws_max_message_size"].size()
    return Upstream(**kwargs)


def _url(node: Node) -> URL:
    """An upstream URL; `${NAME}` and `${NAME:-default}` in it come from the environment."""
    raw = node.string()
    text = _expand(node, raw)
    shown = f"{text!r} (from {raw!r})" if text != raw else repr(text)
    try:
        url = URL(text)
    except ValueError as exc:
        msg = f"invalid url {shown}: {exc}"
        raise node.error(msg) from exc
    if url.scheme not in {"http", "https"} or not url.host:
        msg = f"url {shown} must be http:// or https:// with a host"
        raise node.error(msg)
    if url.raw_path not in {"", "/"} or url.raw_query_string or url.raw_fragment or url.user:
        msg = f"url {shown} must be only scheme://host[:port]: the request path is forwarded as is"
        raise node.error(msg)
    return url.origin()


def _expand(node: Node, text: str) -> str:
    """`text` with each `${NAME}` / `${NAME:-default}` replaced from the environment.

    Exactly these two forms, as in docker-compose: `:-` takes the default when the
    variable is unset or empty; `${NAME}` unset is an error. Any other `$` is an
    error too (a URL never holds one), so a typo is not passed on as a host name.
    """
    literals = _VARIABLE.split(text)[::4]  # split() yields text, name, default, text, ...
    if any("$" in literal for literal in literals):
        msg = f"unsupported '$' in url {text!r}: write ${{NAME}} or ${{NAME:-default}}"
        raise node.error(msg)
    parts: list[str] = []
    end = 0
    for found in _VARIABLE.finditer(text):
        parts.append(text[end : found.start()])
        end = found.end()
        value = os.environ.get(found["name"])
        if found["default"] is not None:
            parts.append(value or found["default"])
        elif value is None:
            msg = f"environment variable {found['name']} is not set (in {text!r})"
            raise node.error(msg)
        else:
            parts.append(value)
    parts.append(text[end:])
    return "".join(parts)


def _positive_int(node: Node) -> int:
    value = node.integer()
    if value <= 0:
        msg = f"must be a positive integer, not {value}"
        raise node.error(msg)
    return value


def _new(node: Node, source: Path) -> NewTarget:
    spec = node.mapping(optional=("app", "url", "config_dir"))
    if ("app" in spec) == ("url" in spec):
        msg = "give exactly one of 'app' (in-process module:factory) or 'url'"
        raise node.error(msg)
    if "url" in spec:
        if "config_dir" in spec:
            msg = "config_dir applies only to an in-process 'app'"
            raise spec["config_dir"].error(msg)
        return NewTarget(url=_url(spec["url"]))
    app = spec["app"].string()
    if not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*", app):
        msg = f"app {app!r} must look like 'package.module:factory'"
        raise spec["app"].error(msg)
    config_dir = None
    if "config_dir" in spec:
        # Relative to the routes file, so the file means the same from any working directory.
        config_dir = (source.parent / spec["config_dir"].string()).resolve()
    return NewTarget(app=app, config_dir=config_dir)


def _routes(
    node: Node, targets: _Targets, errors: list[RoutesError], source: Path, *, expose: bool
) -> list[tuple[int, Route, Pattern]]:
    routes: list[tuple[int, Route, Pattern]] = []
    seen: dict[str, Route] = {}
    with _collect(errors):
        for index, item in enumerate(node.sequence()):
            with _collect(errors):
                route, pattern = _route(item, targets, source, expose=expose)
                if (first := seen.get(route.id)) is not None:
                    msg = f"duplicate route id {route.id!r} (first at line {first.line})"
                    raise item.error(msg)
                seen[route.id] = route
                routes.append((index, route, pattern))
    return routes


def _route(node: Node, targets: _Targets, source: Path, *, expose: bool) -> tuple[Route, Pattern]:
    """One route; `expose` is the file's `expose_target:`, which the route's own overrides."""
    spec = node.mapping(
        required=("id", "match", "to"),
        optional=("canary", "timeouts", "request_buffering", "shadow", "capture", "expose_target"),
    )
    route_id = spec["id"].string()
    if not _NAME.fullmatch(route_id):
        msg = f"invalid id {route_id!r} (letters, digits, '.', '_', '-')"
        raise spec["id"].error(msg)
    methods, path, pattern = _match(spec["match"])
    to = targets.check(spec["to"])
    canary = _canary(spec["canary"], to, targets) if "canary" in spec else None
    timeouts = _timeouts(spec["timeouts"]) if "timeouts" in spec else Timeouts()
    buffering = _buffering(spec["request_buffering"]) if "request_buffering" in spec else None
    shadow = _shadow(spec["shadow"], to, methods, targets) if "shadow" in spec else None
    capture = _capture(spec["capture"], source) if "capture" in spec else None
    if "expose_target" in spec:
        expose = _flag(spec["expose_target"])
    route = Route(
        id=route_id,
        methods=methods,
        path=path,
        to=to,
        canary=canary,
        timeouts=timeouts,
        request_buffering=buffering,
        shadow=shadow,
        capture=capture,
        line=node.line,
        expose_target=expose,
    )
    return route, pattern


def _match(node: Node) -> tuple[frozenset[str], str, Pattern]:
    text = node.string().strip()
    found = _MATCH.fullmatch(text)
    if found is None:
        msg = f"{text!r} is not 'METHOD[,METHOD] /path' or '/path'"
        raise node.error(msg)
    methods = frozenset(m.strip().upper() for m in (found["methods"] or "").split(",") if m.strip())
    if found["methods"] and not methods:
        msg = f"{text!r}: empty method list"
        raise node.error(msg)
    if bad := [m for m in sorted(methods) if not _TOKEN.fullmatch(m)]:
        msg = f"{text!r}: invalid method {bad[0]!r}"
        raise node.error(msg)
    try:
        pattern = parse_pattern(found["path"])
    except ValueError as exc:
        raise node.error(str(exc)) from exc
    return methods, found["path"], pattern


def _canary(node: Node, to: str, targets: _Targets) -> Canary:
    """A route's `canary:`; every problem in it is reported, not only the first."""
    spec = node.mapping(required=("to", "weight"), optional=("sticky",))
    errors: list[RoutesError] = []
    kwargs: dict[str, Any] = {"sticky": None}
    with _collect(errors):
        kwargs["to"] = canary_to = targets.check(spec["to"])
        if canary_to == to:
            msg = f"the canary goes to {to!r}, the same target as the route"
            raise spec["to"].error(msg)
    with _collect(errors):
        kwargs["weight"] = _weight(spec["weight"])
    if "sticky" in spec:
        with _collect(errors):
            kwargs["sticky"] = _sticky(spec["sticky"])
    if errors:
        raise RoutesError.collect(errors)
    return Canary(**kwargs)


def _weight(node: Node) -> float:
    weight = node.number()
    if not 0.0 <= weight <= 1.0:
        msg = f"weight must be between 0 and 1, not {weight}"
        raise node.error(msg)
    return weight


def _sticky(node: Node) -> Sticky:
    kind, _, name = node.string().partition(":")
    kinds = {k.value: k for k in StickyKind}
    if kind not in kinds or not _TOKEN.fullmatch(name):
        msg = f"sticky must be 'header:NAME' or 'cookie:NAME', not {node.raw.value!r}"
        raise node.error(msg)
    return Sticky(kind=kinds[kind], name=name)


def _timeouts(node: Node) -> Timeouts:
    spec = node.mapping(optional=("connect", "read", "client_body", "send"))
    return Timeouts(**{key: value.duration() for key, value in spec.items()})


def _flag(node: Node) -> bool:
    """YAML's `true` or `false` (`on`/`off`, `yes`/`no` too, as YAML 1.1 reads them)."""
    if node.raw.tag != _BOOL:
        msg = "must be true or false"
        raise node.error(msg)
    return not node.is_false()


def _buffering(node: Node) -> int:
    """A size, or `false`: stream every body (0)."""
    if node.is_false():
        return 0
    return node.size()


def _shadow(node: Node, to: str, methods: frozenset[str], targets: _Targets) -> Shadow:
    """A route's `shadow:`; every problem in it is reported, not only the first."""
    spec = node.mapping(required=("to",), optional=tuple(_SHADOW_KEYS))
    errors: list[RoutesError] = []
    kwargs: dict[str, Any] = {}
    with _collect(errors):
        kwargs["to"] = shadow_to = targets.check(spec["to"])
        if shadow_to == to:
            msg = f"the shadow goes to {to!r}, the same target as the route"
            raise spec["to"].error(msg)
    if methods and not methods & SAFE_METHODS:
        with _collect(errors):
            listed = ", ".join(sorted(methods))
            msg = f"the route matches only {listed}: only GET, HEAD and OPTIONS are shadowed"
            raise node.error(msg)
    with _collect(errors):
        kwargs.update(_each(spec, _SHADOW_KEYS))
    if errors:
        raise RoutesError.collect(errors)
    return Shadow(**kwargs)


# A parser of one key's node into the keyword arguments it sets.
_Parse = Callable[[Node], dict[str, Any]]


def _each(spec: Mapping[str, Node], parsers: Mapping[str, _Parse]) -> dict[str, Any]:
    """Every key of `spec` that `parsers` knows, parsed; all their problems, not the first."""
    errors: list[RoutesError] = []
    found: dict[str, Any] = {}
    for key, parse in parsers.items():
        if key in spec:
            with _collect(errors):
                found.update(parse(spec[key]))
    if errors:
        raise RoutesError.collect(errors)
    return found


def _items(node: Node, check: Callable[[Node], str]) -> list[str]:
    """Each item of a sequence, checked; every bad item reported."""
    values: list[str] = []
    errors: list[RoutesError] = []
    for item in node.sequence():
        with _collect(errors):
            values.append(check(item))
    if errors:
        raise RoutesError.collect(errors)
    return values


def _share(key: str) -> _Parse:
    def parse(node: Node) -> dict[str, Any]:
        value = node.number()
        if not 0.0 <= value <= 1.0:
            msg = f"{key} must be between 0 and 1, not {value}"
            raise node.error(msg)
        return {key: value}

    return parse


def _json_path(item: Node) -> str:
    text = item.string()
    try:
        parse_json_path(text)
    except ValueError as exc:
        raise item.error(str(exc)) from exc
    return text


def _header_name(item: Node) -> str:
    name = item.string()
    if not _TOKEN.fullmatch(name):
        msg = f"invalid header name {name!r}"
        raise item.error(msg)
    return name.lower()


def _json_paths(node: Node) -> tuple[str, ...]:
    return tuple(_items(node, _json_path))


def _header_names(node: Node) -> frozenset[str]:
    return frozenset(_items(node, _header_name))


def _sub(parsers: Mapping[str, _Parse]) -> _Parse:
    """A nested mapping (`ignore:`, `redact:`, `verdict:`) of the keys `parsers` knows."""
    return lambda node: _each(node.mapping(optional=tuple(parsers)), parsers)


def _verdict(node: Node) -> dict[str, Any]:
    parsers: dict[str, _Parse] = {
        "min_requests": lambda n: {"min_requests": _positive_int(n)},
        "min_match": _share("min_match"),
    }
    return {"verdict": Verdict(**_sub(parsers)(node))}


_SHADOW_KEYS: dict[str, _Parse] = {
    "sample": _share("sample"),
    "sticky": lambda node: {"sticky": _shadow_sticky(node)},
    "ignore": _sub(
        {
            "headers": lambda n: {"ignore_headers": _header_names(n)},
            "json": lambda n: {"ignore_json": _json_paths(n)},
        }
    ),
    "unordered": lambda node: {"unordered": _json_paths(node)},
    "noise": _share("noise"),
    "max_body": lambda node: {"max_body": node.size()},
    "timeout": lambda node: {"timeout": node.duration()},
    "verdict": _verdict,
    "redact": _sub(
        {
            "headers": lambda n: {"redact_headers": _header_names(n)},
            "json": lambda n: {"redact_json": _json_paths(n)},
        }
    ),
}


def _capture(node: Node, source: Path) -> Capture:
    """A route's `capture:`; every problem in it is reported, not only the first."""
    spec = node.mapping(required=("file",), optional=tuple(_CAPTURE_KEYS))
    errors: list[RoutesError] = []
    kwargs: dict[str, Any] = {}
    with _collect(errors):
        text = spec["file"].string()
        if not text.strip():
            msg = "file must name a file"
            raise spec["file"].error(msg)
        # Relative to the routes file, as new.config_dir.
        kwargs["file"] = (source.parent / text).resolve()
    with _collect(errors):
        kwargs.update(_each(spec, _CAPTURE_KEYS))
    if errors:
        raise RoutesError.collect(errors)
    return Capture(**kwargs)


def _positive_size(key: str) -> _Parse:
    def parse(node: Node) -> dict[str, Any]:
        size = node.size()
        if size <= 0:
            msg = f"{key} must be above zero"
            raise node.error(msg)
        return {key: size}

    return parse


_CAPTURE_KEYS: dict[str, _Parse] = {
    "sample": _share("sample"),
    "max_body": lambda node: {"max_body": node.size()},
    "max_size": _positive_size("max_size"),
    "redact": _sub(
        {
            "headers": lambda n: {"redact_headers": _header_names(n)},
            "query": lambda n: {"redact_query": frozenset(_items(n, lambda i: i.string()))},
            "json": lambda n: {"redact_json": _json_paths(n)},
        }
    ),
}


def _shadow_sticky(node: Node) -> Sticky:
    sticky = _sticky(node)
    if sticky.kind is not StickyKind.HEADER:
        # The fast lane draws the sample and never parses cookies.
        msg = f"shadow sticky must be 'header:NAME', not {node.raw.value!r}"
        raise node.error(msg)
    return sticky


def _shadow_store(node: Node) -> ShadowStore:
    spec = node.mapping(required=("dsn",), optional=("retention", "flush_interval"))
    dsn = spec["dsn"].string()
    if not dsn.startswith(("postgresql://", "postgres://")):
        msg = "dsn must be a postgresql:// URL"
        raise spec["dsn"].error(msg)
    kwargs: dict[str, Any] = {"dsn": dsn}
    for key in ("retention", "flush_interval"):
        if key in spec:
            kwargs[key] = spec[key].duration()
    return ShadowStore(**kwargs)
