"""A route's results as the JSON of `/-/shadow`, and its verdict.

`match_rate` is matched / (matched + mismatched): noise, errors and skips
are left out, since they say nothing about the candidate's answers. The
verdict is `collecting` until `min_requests` of those were judged, then
`ready` at `min_match` or above, else `not_ready`, naming the groups that
made the most mismatches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from proxy.shadow._examples import iso_time
from proxy.shadow._noise import is_noisy
from proxy.shadow._tally import split_signature
from proxy.shadow.model import Outcome

if TYPE_CHECKING:
    from proxy.shadow._tally import GroupTally, RouteTally

__all__ = ["TOP_GROUPS", "RouteInfo", "route_json", "verdict"]

# How many difference groups a not_ready verdict names.
TOP_GROUPS: Final = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteInfo:
    """What the route table says of a shadowed route (or said, for an inactive one)."""

    route_id: str
    shadow_to: str | None
    active: bool
    min_requests: int
    min_match: float


def route_json(info: RouteInfo, tally: RouteTally, *, examples: bool) -> dict[str, Any]:
    """ROUTE of the admin JSON; `examples` adds each group's examples."""
    counts = tally.counts
    matched = counts[Outcome.MATCH, None]
    mismatched = counts[Outcome.MISMATCH, None]
    judged = matched + mismatched
    rate = matched / judged if judged else None
    state, reason = verdict(info, tally)
    return {
        "id": info.route_id,
        "shadow_to": info.shadow_to,
        "active": info.active,
        "compared": judged + counts[Outcome.NOISE, None],
        "matched": matched,
        "mismatched": mismatched,
        "noise": counts[Outcome.NOISE, None],
        "errors": _total(tally, Outcome.ERROR),
        "error_reasons": _reasons(tally, Outcome.ERROR),
        "skipped": _reasons(tally, Outcome.SKIPPED),
        "match_rate": rate,
        "verdict": state,
        "verdict_reason": reason,
        "min_requests": info.min_requests,
        "min_match": info.min_match,
        "noise_samples": tally.noise_samples,
        "groups_dropped": tally.groups_dropped,
        "examples_dropped": tally.examples_dropped,
        "differences": [
            _group_json(signature, group, tally.noise_samples, examples=examples)
            for signature, group in sorted(tally.groups.items(), key=_by_count)
        ],
    }


def verdict(info: RouteInfo, tally: RouteTally) -> tuple[str, str]:
    """(`collecting` | `ready` | `not_ready`, why)."""
    matched = tally.counts[Outcome.MATCH, None]
    judged = matched + tally.counts[Outcome.MISMATCH, None]
    if judged < info.min_requests:
        return "collecting", f"{judged} of {info.min_requests} requests compared (noise left out)"
    rate = matched / judged
    if rate >= info.min_match:
        return "ready", f"match rate {rate:.3%} >= {info.min_match:.3%} over {judged} requests"
    top = sorted(
        ((s, g) for s, g in tally.groups.items() if g.counted), key=lambda i: (-i[1].counted, i[0])
    )[:TOP_GROUPS]
    named = ", ".join(f"{signature} ({group.counted})" for signature, group in top)
    why = (
        f"match rate {rate:.3%} < {info.min_match:.3%} over {judged} requests; "
        f"top differences: {named or 'none kept (groups_dropped)'}"
    )
    return "not_ready", why


def _by_count(item: tuple[str, GroupTally]) -> tuple[int, int, str]:
    return -item[1].count, -item[1].noise_count, item[0]


def _total(tally: RouteTally, outcome: Outcome) -> int:
    return sum(n for (o, _), n in tally.counts.items() if o is outcome)


def _reasons(tally: RouteTally, outcome: Outcome) -> dict[str, int]:
    found = {
        reason.value: n
        for (o, reason), n in tally.counts.items()
        if o is outcome and reason is not None and n
    }
    return dict(sorted(found.items()))


def _group_json(
    signature: str, group: GroupTally, noise_samples: int, *, examples: bool
) -> dict[str, Any]:
    kind, path = split_signature(signature)
    found: dict[str, Any] = {
        "signature": signature,
        "path": path,
        "kind": kind,
        "count": group.count,
        "mismatches": group.counted,
        "first_seen": iso_time(group.first_seen),
        "last_seen": iso_time(group.last_seen),
        "noisy": is_noisy(group.noise_count, noise_samples),
        "noise_count": group.noise_count,
        "noise_rate": group.noise_count / noise_samples if noise_samples else None,
    }
    if examples:
        found["examples"] = [group.examples[slot].data for slot in sorted(group.examples)]
    return found
