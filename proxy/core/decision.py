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

A trusted peer (`ForwardingPolicy.is_trusted`) may force the target of one
request with `X-Club-Force-Target: <target>` (a target the table knows);
such a request is neither shadowed nor captured. From anyone else, or naming
an unknown target, the header is ignored; it never goes upstream
(`proxy.core.headers`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, NamedTuple, Protocol

from proxy.routing.canary import capture_sampled, choose_target, shadow_sampled
from proxy.routing.model import NEW

if TYPE_CHECKING:
    from collections.abc import Mapping

    from proxy.core.headers import ForwardingPolicy
    from proxy.routing.model import Capture, Route, RouteMatch, Shadow
    from proxy.routing.table import RouteTable

__all__ = [
    "FORCE_TARGET",
    "CookieSource",
    "Decision",
    "PendingDecision",
    "decide",
    "exposes_target",
    "take_decision",
]

# The request header a trusted peer forces a request's target with.
FORCE_TARGET: Final = "X-Club-Force-Target"


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


def decide(  # noqa: PLR0917 - the request's parts, positional on every request's path
    table: RouteTable,
    match: RouteMatch,
    headers: Mapping[str, str],
    cookies: CookieSource,
    policy: ForwardingPolicy | None = None,
    peer: str | None = None,
) -> Decision:
    """The request's target (the route's `to`, or its canary's) and shadow, drawn once.

    `match` is `table.match(method, path)`; `headers` must look names up
    case-insensitively; `cookies.cookies` is read only by a cookie-sticky
    canary route. With a `policy` that trusts some peers, a trusted `peer`'s
    `X-Club-Force-Target` names the target instead (see the module).
    """
    route = match.route
    if policy is not None and policy.trusted:
        forced = _forced_target(table, headers, policy, peer)
        if forced is not None:
            return _new_decision(Decision, (table, route, forced, None, None))
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


def _forced_target(
    table: RouteTable, headers: Mapping[str, str], policy: ForwardingPolicy, peer: str | None
) -> str | None:
    """The target `X-Club-Force-Target` names, if the table knows it and the peer is trusted."""
    value = headers.get(FORCE_TARGET)
    if value is None:
        return None
    target = value.strip()
    known = target in table.upstreams or (target == NEW and table.new is not None)
    if not known or not policy.is_trusted(peer):
        return None
    return target


def exposes_target(decision: Decision) -> bool:
    """Whether this request's answer carries `X-Club-Target` (`expose_target:`)."""
    route = decision.route
    return route.expose_target if route is not None else decision.table.expose_target


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
