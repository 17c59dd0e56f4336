"""Where a request goes: the one target choice of both request paths.

`decide` takes the route a request matched on the table it read once and,
for a canary route, draws (or reads the sticky bucket) once. Its `Decision`
names the table, the route and the chosen target, and stays with the request
to its end: when the fast lane hands a request it has decided over to
aiohttp's path (a `to: new` target is answered there), the decision travels
with it (`proxy.serving.protocol.ProxyRequestHandler.pending_decision`) and
the aiohttp path uses it instead of deciding again. A second draw would send
a canary route's requests to the canary with the weight squared.

The shadow draw (whether a copy of the request goes to the other side) is
made here too, for the same reason: `Decision.shadow` is the route's
`shadow:` when this request is in its sample, else None; and so is the
capture draw (`Decision.capture`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, NamedTuple, Protocol

from proxy.routing.canary import capture_sampled, choose_target, shadow_sampled

if TYPE_CHECKING:
    from collections.abc import Mapping

    from proxy.routing.model import Capture, Route, RouteMatch, Shadow
    from proxy.routing.table import RouteTable

__all__ = ["CookieSource", "Decision", "PendingDecision", "decide", "take_decision"]


class Decision(NamedTuple):
    """Where one request goes: its route (None: the default target), on which table.

    `shadow`: the route's `shadow:` when this request was drawn for a copy;
    `capture`: the route's `capture:` when it was drawn to be recorded.
    """

    table: RouteTable
    route: Route | None
    target: str
    shadow: Shadow | None = None
    capture: Capture | None = None


class CookieSource(Protocol):
    """Where `decide` reads a request's cookies, only for a cookie-sticky canary."""

    @property
    def cookies(self) -> Mapping[str, str]:
        """The request's cookies by name (aiohttp's `Request.cookies`)."""
        ...


# A Decision without NamedTuple's Python-level __new__: this runs per request.
_new_decision: Final = tuple.__new__


def decide(
    table: RouteTable, match: RouteMatch, headers: Mapping[str, str], cookies: CookieSource
) -> Decision:
    """The request's target (the route's `to`, or its canary's) and shadow, drawn once.

    `match` is `table.match(method, path)`; `headers` must look names up
    case-insensitively; `cookies.cookies` is read only by a cookie-sticky
    canary route.
    """
    route = match.route
    if route is None:
        return _new_decision(Decision, (table, route, match.target, None, None))
    target = (
        match.target if route.canary is None else choose_target(match, headers, cookies.cookies)
    )
    if not route.tapped:
        return _new_decision(Decision, (table, route, target, None, None))
    shadow = route.shadow
    if shadow is not None and not shadow_sampled(shadow, headers):
        shadow = None
    capture = route.capture
    if capture is not None and not capture_sampled(capture):
        capture = None
    return _new_decision(Decision, (table, route, target, shadow, capture))


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
