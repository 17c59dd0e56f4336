"""The precompiled matcher behind `RouteTable.match` (the per-request hot path).

Built once per table: a dict from canonical literal path to its routes (one
lookup answers most requests, with a ready-made `RouteMatch`), and a segment
tree for patterns, searched depth-first in specificity order (literal, then
``{param}``, then ``{rest*}``) so the first route found is the most specific one
compared segment by segment from the left. At the end of a path an explicit
method beats a method-less route, and ``GET`` also answers ``HEAD`` unless a
route names ``HEAD`` itself. No regular expression or allocation beyond the
result happens per request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

from proxy.errors import RoutesError
from proxy.routing._paths import PARAM, TAIL, Pattern, normalise, param_value
from proxy.routing.model import Route, RouteMatch

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

__all__ = ["Matcher"]

ANY = "*"  # key of method-less routes
_NO_PARAMS: MappingProxyType[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class _Entry:
    route: Route
    names: tuple[str, ...]
    index: int  # position in routes.yaml, for messages
    fixed: RouteMatch  # the answer when there are no parameters


@dataclass(slots=True)
class _Node:
    literals: dict[str, _Node] = field(default_factory=dict)
    param: _Node | None = None
    here: dict[str, _Entry] = field(default_factory=dict)  # routes ending at this node
    tail: dict[str, _Entry] = field(default_factory=dict)  # `{rest*}` routes hanging here


class Matcher:
    """Matches (method, raw path) to a `RouteMatch`; build with `Matcher.build`."""

    __slots__ = ("_default", "_literal", "_root")

    def __init__(self, default: str) -> None:
        self._default = RouteMatch(route=None, target=default, params=_NO_PARAMS)
        self._literal: dict[str, dict[str, RouteMatch]] = {}
        self._root = _Node()

    @classmethod
    def build(
        cls, routes: Sequence[tuple[int, Route, Pattern]], *, default: str, path: Path
    ) -> Matcher:
        """Compile the routes; overlapping routes of equal specificity raise RoutesError."""
        matcher = cls(default)
        errors: list[RoutesError] = []
        for index, route, pattern in routes:
            fixed = RouteMatch(route=route, target=route.to, params=_NO_PARAMS)
            entry = _Entry(route=route, names=pattern.names, index=index, fixed=fixed)
            slot = matcher._slot(pattern)
            for method in sorted(route.methods) or [ANY]:
                if (other := slot.get(method)) is not None:
                    errors.append(_overlap(entry, other, method, pattern, path))
                    continue
                slot[method] = entry
        matcher._finish(matcher._root, "")
        if errors:
            raise RoutesError.collect(errors)
        return matcher

    def _slot(self, pattern: Pattern) -> dict[str, _Entry]:
        node = self._root
        for segment in pattern.segments:
            if segment == TAIL:
                return node.tail
            if segment == PARAM:
                node.param = node.param or _Node()
                node = node.param
            else:
                node = node.literals.setdefault(segment, _Node())
        return node.here

    def _finish(self, node: _Node, prefix: str | None) -> None:
        # GET answers HEAD too (as aiohttp's add_get does), unless HEAD is routed explicitly.
        for slot in (node.here, node.tail):
            if "GET" in slot and "HEAD" not in slot:
                slot["HEAD"] = slot["GET"]
        # Only nodes reached through literal segments alone go in the literal index.
        if prefix is not None and node.here:
            self._literal[prefix] = {m: e.fixed for m, e in node.here.items()}
        for segment, child in node.literals.items():
            self._finish(child, None if prefix is None else f"{prefix}/{segment}")
        if node.param is not None:
            self._finish(node.param, None)

    def match(self, method: str, raw_path: str) -> RouteMatch:
        """The route for a request; the default target when none applies."""
        if "?" in raw_path:
            raw_path = raw_path.partition("?")[0]
        path = normalise(raw_path)
        by_method = self._literal.get(path)
        if by_method is not None:
            found = by_method.get(method) or by_method.get(ANY)
            if found is not None:
                return found
        if not path.startswith("/"):
            return self._default
        values: list[str] = []
        entry = _walk(self._root, path[1:].split("/"), 0, method, values)
        if entry is None:
            return self._default
        if not entry.names:
            return entry.fixed
        params = {name: param_value(value) for name, value in zip(entry.names, values, strict=True)}
        return RouteMatch(route=entry.route, target=entry.route.to, params=params)


def _walk(
    node: _Node, segments: list[str], i: int, method: str, values: list[str]
) -> _Entry | None:
    # Depth-first in specificity order; `values` collects parameter segments as it goes.
    if i == len(segments):
        entry = node.here.get(method) or node.here.get(ANY)
        if entry is None and node.tail:
            entry = node.tail.get(method) or node.tail.get(ANY)
            if entry is not None:
                values.append("")
        return entry
    segment = segments[i]
    child = node.literals.get(segment)
    if child is not None and (entry := _walk(child, segments, i + 1, method, values)):
        return entry
    if node.param is not None and segment:
        values.append(segment)
        if entry := _walk(node.param, segments, i + 1, method, values):
            return entry
        values.pop()
    if node.tail and (entry := node.tail.get(method) or node.tail.get(ANY)):
        values.append("/".join(segments[i:]))
        return entry
    return None


def _overlap(
    entry: _Entry, other: _Entry, method: str, pattern: Pattern, path: Path
) -> RoutesError:
    methods = "every method" if method == ANY else method
    msg = (
        f"route {entry.route.id!r} is ambiguous with route {other.route.id!r} "
        f"(line {other.route.line}): both match {methods} {pattern.shape} "
        "with the same specificity"
    )
    return RoutesError(msg, path=path, line=entry.route.line, key=f"routes[{entry.index}].match")
