"""Where a request goes: the one target choice of both request paths.

`decide` matches the request against the route table it was given and, for a
canary route, draws (or reads the sticky bucket) once. Its `Decision` names the
table, the route and the chosen target, and stays with the request to its
end: when the fast lane hands a request it has decided over to aiohttp's path
(a `to: new` target is answered there), the decision travels with it
(`proxy.serving.protocol.ProxyRequestHandler.hand_decision`) and the aiohttp
path uses it instead of deciding again. A second draw would send a canary
route's requests to the canary with the weight squared.

The shadow decision (whether a copy goes to the other side) will be made
here too, for the same reason.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from proxy.routing.canary import choose_target

if TYPE_CHECKING:
    from collections.abc import Mapping

    from proxy.routing.model import Route, RouteMatch
    from proxy.routing.table import RouteTable

__all__ = [
    "Decision",
    "PendingDecision",
    "decide",
    "match_request",
    "take_decision",
]


class Decision(NamedTuple):
    """Where one request goes: its route (None: the default target), on which table."""

    table: RouteTable
    route: Route | None
    target: str


def match_request(table: RouteTable, method: str, raw_target: str) -> RouteMatch:
    """The route `raw_target` (origin-form, query and all) matches on `table`."""
    return table.match(method, raw_target.partition("?")[0])


def decide(
    table: RouteTable,
    match: RouteMatch,
    headers: Mapping[str, str],
    cookies: Mapping[str, str],
) -> Decision:
    """The request's target: the route's `to`, or its canary's, drawn once.

    `headers` must look names up case-insensitively; `cookies` are the
    request's cookies (only read by a cookie-sticky canary).
    """
    route = match.route
    if route is None or route.canary is None:
        return Decision(table, route, match.target)
    return Decision(table, route, choose_target(match, headers, cookies))


class PendingDecision(NamedTuple):
    """A decision handed over with its request, from the fast lane to aiohttp's path."""

    method: str
    raw_target: str
    decision: Decision


def take_decision(handler: object, method: str, raw_target: str) -> Decision | None:
    """The decision handed over with this request, or None: decide it here.

    The first request a handed-over connection reads is the one the lane
    decided; the method and target are compared all the same, so a decision
    can never be applied to another request.
    """
    pending: PendingDecision | None = getattr(handler, "pending_decision", None)
    if pending is None:
        return None
    handler.pending_decision = None  # type: ignore[attr-defined]
    if pending.method != method or pending.raw_target != raw_target:
        return None
    return pending.decision
