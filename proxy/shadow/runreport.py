"""A comparison run's report: report.json's data, the pass/fail gate, the terminal summary.

`build_report` takes the routes of `ShadowBook.report(examples=True)` (the
model of `/-/shadow`) and adds each route's latencies (p50, p90, p99 of both
sides, in seconds) and its `gate`; `write_reports` writes `report.json` and
the page of `proxy.shadow.report_html`. No reported byte may hold a secret:
examples are redacted like live ones, and `scrub` masks the values of the
run's own test credentials wherever a side echoed them.
"""

from __future__ import annotations

import json
import math
import re
from typing import TYPE_CHECKING, Any, Final, TypeAlias

from proxy.shadow.redact import mask
from proxy.shadow.report_html import render_html

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence
    from pathlib import Path

    from proxy.shadow.results import ShadowBook

__all__ = [
    "build_report",
    "format_summary",
    "gate",
    "percentiles",
    "scrub",
    "secret_forms",
    "write_reports",
]

# (legacy, new) answer times in seconds of a route's compared requests.
Latency: TypeAlias = "Callable[[str], tuple[Sequence[float], Sequence[float]]]"

_TOP_GROUPS: Final = 5
_COLUMNS: Final = (
    "route",
    "compared",
    "match",
    "mismatch",
    "noise",
    "errors",
    "skipped",
    "rate",
    "verdict",
    "gate",
)
# Shorter secrets are not scrubbed from reports: they would mask common words.
_MIN_SECRET: Final = 4


async def build_report(
    book: ShadowBook,
    latency: Latency,
    run: dict[str, Any],
    *,
    fail_under: float | None,
    secrets: Iterable[str] = (),
) -> dict[str, Any]:
    """`{"run": run, "routes": [...]}`; `run["skipped"]` gets every reason's total."""
    found = await book.report(examples=True)
    routes: list[dict[str, Any]] = [] if found is None else found["routes"]
    skipped: dict[str, int] = {}
    for route in routes:
        legacy, new = latency(route["id"])
        route["latency"] = {"legacy": percentiles(legacy), "new": percentiles(new)}
        route["gate"] = gate(route, fail_under)
        for reason, n in (*route["skipped"].items(), *route["error_reasons"].items()):
            skipped[reason] = skipped.get(reason, 0) + n
    run["skipped"] = dict(sorted(skipped.items()))
    scrubbed: dict[str, Any] = scrub({"run": run, "routes": routes}, secrets)
    return scrubbed


def gate(route: Mapping[str, Any], fail_under: float | None) -> dict[str, Any]:
    """Does the route pass? Its match rate against the bar, and its failed requests too.

    The bar is `fail_under`, else the route's `min_match`. Requests that
    failed on a side (errors, `primary_error`) are left out of the match
    rate, as live; so that a failing side cannot hide mismatches, their
    share may not pass what the bar allows mismatches (1 - bar).
    """
    threshold = route["min_match"] if fail_under is None else fail_under
    judged = route["matched"] + route["mismatched"]
    failed = route["errors"] + route["skipped"].get("primary_error", 0)
    rate = route["match_rate"]
    if failed and failed / (judged + failed) > 1.0 - threshold:
        why = f"{failed} of {judged + failed} requests failed on a side"
        return {"threshold": threshold, "passed": False, "reason": why}
    if rate is not None and rate < threshold:
        why = f"match rate {rate:.3%} < {threshold:.3%}"
        return {"threshold": threshold, "passed": False, "reason": why}
    why = "nothing to compare" if rate is None else f"match rate {rate:.3%} >= {threshold:.3%}"
    return {"threshold": threshold, "passed": True, "reason": why}


def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    """p50, p90 and p99 of `values` (nearest rank), rounded to microseconds; None when empty."""
    ordered = sorted(values)
    found: dict[str, float | None] = {}
    for name, share in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
        rank = max(math.ceil(share * len(ordered)) - 1, 0)
        found[name] = round(ordered[rank], 6) if ordered else None
    return found


def secret_forms(value: str) -> set[str]:
    """`value` and its parts a side could echo: the token after a scheme, each cookie's value."""
    forms = {value, value.rpartition(" ")[2]}
    for piece in value.split(";"):
        forms.add(piece.strip())
        forms.add(piece.partition("=")[2].strip())
    return {form for form in forms if len(form) >= _MIN_SECRET}


def scrub(value: Any, secrets: Iterable[str]) -> Any:
    """`value` (JSON data) with every occurrence of `secrets` in its strings masked."""
    ordered = sorted(set(secrets), key=len, reverse=True)
    if not ordered:
        return value
    pattern = re.compile("|".join(re.escape(s) for s in ordered))
    return _scrub(value, pattern)


def _scrub(value: Any, pattern: re.Pattern[str]) -> Any:
    if isinstance(value, str):
        return pattern.sub(lambda m: mask(m.group()), value)
    if isinstance(value, dict):
        return {key: _scrub(item, pattern) for key, item in value.items()}
    if isinstance(value, list):
        return [_scrub(item, pattern) for item in value]
    return value


def format_summary(report: Mapping[str, Any]) -> str:
    """The terminal summary: the run, a row per route, each route's top difference groups."""
    run = report["run"]
    skipped = ", ".join(f"{k} {v}" for k, v in run["skipped"].items()) or "none"
    head = (
        f"compared {run['legacy']} (legacy) with {run['new']} (new): {run['requests']} requests, "
        f"{run['replayed']} replayed; not compared: {skipped}"
    )
    lines = [head]
    rows = [_COLUMNS, *(_row(route) for route in report["routes"])]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    lines += (
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )
    for route in report["routes"]:
        # A not_ready verdict's reason repeats the rate and the groups listed below.
        why = f"; {route['verdict_reason']}" if route["verdict"] == "collecting" else ""
        lines.append(f"{route['id']}: {route['gate']['reason']}{why}")
        lines += (_group_line(group) for group in route["differences"][:_TOP_GROUPS])
    return "\n".join(lines) + "\n"


def _row(route: Mapping[str, Any]) -> tuple[str, ...]:
    rate = route["match_rate"]
    return (
        route["id"],
        str(route["compared"]),
        str(route["matched"]),
        str(route["mismatched"]),
        str(route["noise"]),
        str(route["errors"]),
        str(sum(route["skipped"].values())),
        "-" if rate is None else f"{rate:.2%}",
        route["verdict"],
        "pass" if route["gate"]["passed"] else "FAIL",
    )


def _group_line(group: Mapping[str, Any]) -> str:
    """`count signature`, and where one example differed (its method, target and path)."""
    line = f"  {group['count']:>7}  {group['signature']}" + (" (noisy)" if group["noisy"] else "")
    for example in group.get("examples", [])[:1]:
        paths = [d["path"] for d in example["differences"] if d["signature"] == group["signature"]]
        line += f"  e.g. {example['method']} {example['target']}"
        line += f" at {paths[0]}" if paths and paths[0] != group["path"] else ""
    return line


def write_reports(directory: Path, report: Mapping[str, Any], latency: Latency) -> None:
    """`report.json` and `report.html` in `directory` (made when missing)."""
    directory.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=2, ensure_ascii=False) + "\n"
    (directory / "report.json").write_text(text, encoding="utf-8")
    latencies = {route["id"]: latency(route["id"]) for route in report["routes"]}
    (directory / "report.html").write_text(render_html(report, latencies), encoding="utf-8")
