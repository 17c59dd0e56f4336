"""Canary choice: send a route's `canary.weight` share of traffic to `canary.to`.

Without `sticky`, every request draws at random. With ``sticky: header:NAME``
or ``cookie:NAME``, the client's value decides: its bucket is a stable hash of
the value mapped to [0, 1), and the client goes to the canary when the bucket is
below the weight. The bucket does not depend on the route, the process or the
restart (unlike Python's `hash`), so a client sees the same side on every
worker, and raising a weight only moves more clients to the canary, never one
back. A request without the sticky value falls back to a random draw.
"""

from __future__ import annotations

import hashlib
import random
from typing import TYPE_CHECKING

from proxy.routing.model import StickyKind

if TYPE_CHECKING:
    from collections.abc import Mapping

    from proxy.routing.model import Capture, RouteMatch, Shadow

__all__ = ["capture_sampled", "choose_target", "shadow_sampled", "sticky_bucket"]

_random = random.random
_SCALE = float(2**64)


def sticky_bucket(value: str) -> float:
    """The client's position in [0, 1), stable across processes and restarts."""
    digest = hashlib.blake2b(value.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


def choose_target(match: RouteMatch, headers: Mapping[str, str], cookies: Mapping[str, str]) -> str:
    """The route's `to`, or its canary's `to` (headers must be case-insensitive)."""
    route = match.route
    if route is None or (canary := route.canary) is None:
        return match.target
    weight = canary.weight
    if weight <= 0.0:
        return match.target
    if weight >= 1.0:
        return canary.to
    sticky = canary.sticky
    if sticky is not None:
        source = headers if sticky.kind is StickyKind.HEADER else cookies
        value = source.get(sticky.name)
        if value:
            return canary.to if sticky_bucket(value) < weight else match.target
    return canary.to if _random() < weight else match.target


def shadow_sampled(shadow: Shadow, headers: Mapping[str, str]) -> bool:
    """Whether this request is in the route's shadow `sample`, drawn as a canary is.

    With `sticky`, a client's requests are all copied or none are (a header
    value's bucket, as above), so a comparison sees whole client sessions.
    """
    sample = shadow.sample
    if sample >= 1.0:
        return True
    if sample <= 0.0:
        return False
    sticky = shadow.sticky
    if sticky is not None and sticky.kind is StickyKind.HEADER:
        value = headers.get(sticky.name)
        if value:
            return sticky_bucket(value) < sample
    return _random() < sample


def capture_sampled(capture: Capture) -> bool:
    """Whether this request is in the route's capture `sample` (a random draw)."""
    sample = capture.sample
    return sample >= 1.0 or (sample > 0.0 and _random() < sample)
