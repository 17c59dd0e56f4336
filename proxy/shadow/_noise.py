"""Diffy's noise, per request: which differences of one comparison count.

A request sent to the primary twice (the secondary) shows where the primary
differs from itself. A difference between primary and candidate does not
count when the same signature differed between the two primary answers of
this very request, or when the route's noise stats call the signature noisy:
it differed primary-vs-primary in more than `NOISE_THRESHOLD` of at least
`MIN_NOISE_SAMPLES` noise samples.

Why these numbers: the primary run twice should never differ on a
deterministic field, so any steady rate above a glitch marks a field whose
candidate differences say nothing about the candidate. 1% lets a rare race
(data written between the two calls) pass without hiding the field for good;
below 10 samples one occurrence is already 10% or more, too coarse to call,
so there only the request's own secondary discounts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from proxy.shadow.model import Outcome

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from proxy.shadow.model import Difference

__all__ = ["MIN_NOISE_SAMPLES", "NOISE_THRESHOLD", "Decision", "decide", "is_noisy"]

NOISE_THRESHOLD: Final = 0.01
MIN_NOISE_SAMPLES: Final = 10


def is_noisy(noise_count: int, noise_samples: int) -> bool:
    """True when a signature differed primary-vs-primary often enough to be noise."""
    return noise_samples >= MIN_NOISE_SAMPLES and noise_count / noise_samples > NOISE_THRESHOLD


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """One comparison judged: its outcome and its signatures, counted or discounted."""

    outcome: Outcome
    counted: tuple[str, ...]  # signatures that made the request a mismatch
    discounted: tuple[str, ...]  # signatures that differed but are noise


def decide(
    differences: Sequence[Difference],
    noise: Sequence[Difference] | None,
    noisy: Callable[[str], bool],
) -> Decision:
    """MATCH without differences, NOISE when all of them are noise, else MISMATCH.

    Signatures are listed once each, in their first order: a request with
    `$.items[0].x` and `$.items[3].x` changed counts once for `$.items[*].x`.
    """
    own_noise = {d.signature for d in noise or ()}
    signatures = dict.fromkeys(d.signature for d in differences)
    is_noise = {s: s in own_noise or noisy(s) for s in signatures}
    counted = tuple(s for s, noise_here in is_noise.items() if not noise_here)
    discounted = tuple(s for s, noise_here in is_noise.items() if noise_here)
    if counted:
        outcome = Outcome.MISMATCH
    elif discounted:
        outcome = Outcome.NOISE
    else:
        outcome = Outcome.MATCH
    return Decision(outcome=outcome, counted=counted, discounted=discounted)
