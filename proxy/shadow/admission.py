"""Which copies a process can afford: a rate cap, and a breaker per route for a failing candidate.

Copies cost the proxy CPU on the same event loop as the clients' requests
(a second request, a comparison), so the runtime takes at most `rate` copies
per second per process (a token bucket; 0: no cap, GoReplay's `|N` limiter)
and drops the rest as `rate_limited`. A candidate that keeps timing out or
failing would hold every worker and fill the queue for every route; after
`failures` errors in a row its route's copies stop (`candidate_down`) for a
cool-down that doubles while it keeps failing (Envoy's outlier ejection).
When a cool-down ends one copy goes through as a probe, and the rest wait
until it has answered (the breaker closes) or failed (a longer cool-down).
"""

from __future__ import annotations

from dataclasses import dataclass
from time import monotonic
from typing import TYPE_CHECKING, Final

from proxy.shadow.model import SkipReason

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["Admission"]

_FAILURES: Final = 5
_COOLDOWN: Final = 5.0
_MAX_COOLDOWN: Final = 60.0


@dataclass(slots=True)
class _Breaker:
    failures: int = 0
    open_until: float = 0.0
    cooldown: float = _COOLDOWN
    tripped: bool = False  # opened at least once: past a cool-down, one probe at a time
    probing: bool = False


class Admission:
    """`refuse(route)` on the request path; `paused`, `failed`, `answered` from the workers."""

    __slots__ = ("_breakers", "_clock", "_rate", "_stamp", "_tokens")

    def __init__(self, *, rate: float, clock: Callable[[], float] = monotonic) -> None:
        self._rate = rate
        self._clock = clock
        self._tokens = rate  # a burst of one second's worth
        self._stamp = clock()
        self._breakers: dict[str, _Breaker] = {}

    def refuse(self, route_id: str) -> SkipReason | None:
        """Why a new copy of this route must not be made now, or None (a token is taken)."""
        breaker = self._breakers.get(route_id)
        if breaker is not None and breaker.tripped:
            if breaker.open_until > self._clock() or breaker.probing:
                return SkipReason.CANDIDATE_DOWN
            breaker.probing = True  # this copy is the probe
        rate = self._rate
        if rate <= 0:
            return None
        now = self._clock()
        tokens = min(rate, self._tokens + (now - self._stamp) * rate)
        self._stamp = now
        if tokens < 1.0:
            self._tokens = tokens
            if breaker is not None and breaker.probing:
                breaker.probing = False  # the probe was not sent after all
            return SkipReason.RATE_LIMITED
        self._tokens = tokens - 1.0
        return None

    def paused(self, route_id: str) -> bool:
        """Whether the route's candidate is in a cool-down (a queued copy is not sent)."""
        breaker = self._breakers.get(route_id)
        return breaker is not None and breaker.open_until > self._clock()

    def failed(self, route_id: str) -> None:
        """The candidate timed out or failed on a copy of this route."""
        breaker = self._breakers.setdefault(route_id, _Breaker())
        now = self._clock()
        if breaker.open_until > now:
            return  # copies sent before the pause: they do not lengthen it
        breaker.failures += 1
        if breaker.probing or (not breaker.tripped and breaker.failures >= _FAILURES):
            breaker.open_until = now + breaker.cooldown
            breaker.cooldown = min(breaker.cooldown * 2, _MAX_COOLDOWN)
            breaker.tripped = True
            breaker.probing = False

    def answered(self, route_id: str) -> None:
        """The candidate answered a copy of this route: it is healthy again."""
        if route_id in self._breakers:
            del self._breakers[route_id]
