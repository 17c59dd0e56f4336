"""Ignore rules the learned noise suggests, and the YAML to paste into routes.yaml.

A noisy signature on a JSON path becomes an `ignore.json` pattern (the
collapsed path, `[*]` for any index), one on `headers.<name>` an
`ignore.headers` name. Others have no rule that says only that much, so
they are not suggested: `status`, `body`, and a cookie of `Set-Cookie`
(ignoring the header would hide every cookie). A rule ignores the path
whatever the kind, so the reason names the kinds seen as noise.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from proxy.routing.jsonpath import parse_json_path
from proxy.shadow._noise import is_noisy
from proxy.shadow._tally import split_signature

if TYPE_CHECKING:
    from collections.abc import Sequence

    from proxy.shadow._tally import RouteTally

__all__ = ["RuleKind", "Suggestion", "suggest", "suggestions_yaml"]

_HEADERS = "headers."
_COOKIES = "headers.set-cookie."


class RuleKind(enum.StrEnum):
    JSON = "json"  # an `ignore.json` pattern
    HEADER = "header"  # an `ignore.headers` name


@dataclass(frozen=True, slots=True, kw_only=True)
class Suggestion:
    """One ignore rule: `path` is the JSON path pattern or the lower-case header name."""

    kind: RuleKind
    path: str
    noise_rate: float  # the highest over the signatures it covers
    reason: str

    def as_dict(self) -> dict[str, Any]:
        """The JSON form: kind, path, noise_rate, reason."""
        return {
            "kind": self.kind.value,
            "path": self.path,
            "noise_rate": self.noise_rate,
            "reason": self.reason,
        }


def suggest(tally: RouteTally) -> list[Suggestion]:
    """The rules for the route's noisy signatures: headers first, then JSON paths."""
    samples = tally.noise_samples
    found: dict[tuple[RuleKind, str], list[tuple[float, str]]] = {}
    for signature, group in tally.groups.items():
        rule = _rule(signature)
        if rule is not None and is_noisy(group.noise_count, samples):
            found.setdefault(rule, []).append((group.noise_count / samples, signature))
    suggestions = []
    for (kind, path), seen in sorted(
        found.items(), key=lambda i: (i[0][0] != RuleKind.HEADER, i[0][1])
    ):
        rate = max(r for r, _ in seen)
        kinds = ", ".join(f"{split_signature(s)[0]} {r:.1%}" for r, s in sorted(seen, reverse=True))
        reason = f"the primary differed from itself here in {kinds} of {samples} noise samples"
        suggestions.append(Suggestion(kind=kind, path=path, noise_rate=rate, reason=reason))
    return suggestions


def _rule(signature: str) -> tuple[RuleKind, str] | None:
    _, path = split_signature(signature)
    if path.startswith("$"):
        try:
            parse_json_path(path)
        except ValueError:
            return None  # a key the pattern language cannot spell
        return RuleKind.JSON, path
    if path.startswith(_HEADERS) and not path.startswith(_COOKIES):
        return RuleKind.HEADER, path.removeprefix(_HEADERS)
    return None


def suggestions_yaml(route_id: str, suggestions: Sequence[Suggestion]) -> str:
    """YAML to paste under the route's `shadow:`, a comment line per rule with its noise rate.

    Values are JSON strings, which YAML reads as double-quoted scalars, so
    any path or name is quoted correctly.
    """
    head = f"# ignore rules suggested by the noise of route {json.dumps(route_id)}"
    if not suggestions:
        return f"{head}: none (no noisy field)\n"
    lines = [f"{head}; paste under the route's shadow:", "ignore:"]
    for kind, key in ((RuleKind.HEADER, "headers"), (RuleKind.JSON, "json")):
        rules = [s for s in suggestions if s.kind is kind]
        if rules:
            lines.append(f"  {key}:")
        for rule in rules:
            lines.append(f"    # noise rate {rule.noise_rate:.1%}: {_one_line(rule.reason)}")
            lines.append(f"    - {json.dumps(rule.path)}")
    return "\n".join(lines) + "\n"


def _one_line(text: str) -> str:
    return " ".join(text.split())
