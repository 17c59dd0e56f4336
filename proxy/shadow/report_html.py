"""A comparison run's report as one self-contained HTML page.

The page fetches nothing: its style is inline, the latency plots are inline
SVG, there is no script, and a Content-Security-Policy of `default-src
'none'` keeps it that way should a value ever look like a URL. It is also
well-formed XML, so any XML parser can check it. Per route: the counts and
the verdict, the latency distributions of both sides (a CDF up to the
slower side's 99th percentile), the difference groups, and for each group
one example side by side, the lines at its differing paths highlighted.
Everything shown comes from the report, already redacted.
"""

from __future__ import annotations

import base64
import binascii
import html
import itertools
import json
import re
from typing import TYPE_CHECKING, Any, Final

from proxy.shadow._bodies import NOT_JSON, Overflow, decode_body, is_json_type, media_type
from proxy.shadow._bodies import parse_json as parse_body
from proxy.shadow._cdfplot import cdf_svg
from proxy.shadow._jsonpath import child_path

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

__all__ = ["render_html"]

# Lines of one side's example shown; the rest are counted.
MAX_LINES: Final = 1500
# Differences listed under one example.
MAX_DIFFERENCES: Final = 30
_DECODE_LIMIT: Final = 1024 * 1024
_CONTROL: Final = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# Nothing may be fetched: no script, image, font or frame; inline style only.
_CSP: Final = "default-src 'none'; style-src 'unsafe-inline'"

_STYLE: Final = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
.ready { color: #176117; font-weight: bold; }
.not_ready { color: #a31515; font-weight: bold; }
.collecting { color: #666; font-weight: bold; }
.sides { display: grid; grid-template-columns: 1fr 1fr; gap: 1em; }
pre { background: #fafafa; border: 1px solid #ddd; padding: 0.5em; overflow: auto;
      max-height: 40em; margin: 0; font-size: 12px; }
.hl { background: #ffe28a; display: inline-block; min-width: 100%; }
.legacy { stroke: #1f5fbf; } .new { stroke: #d9661f; }
svg text { font-size: 11px; fill: #444; }
svg .axis { stroke: #888; } svg .grid { stroke: #eee; }
code { background: #f3f3f3; padding: 0 0.2em; }
"""


def render_html(
    report: Mapping[str, Any], latencies: Mapping[str, tuple[Sequence[float], Sequence[float]]]
) -> str:
    """The page for `report` (the run's report.json data) and each route's (legacy, new) latencies."""
    run = report["run"]
    parts = [
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"/>',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}"/>',
        "<title>club-proxy compare</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>club-proxy compare</h1>",
        _run_table(run),
        _routes_table(report["routes"]),
    ]
    parts += (_route(route, latencies.get(route["id"], ((), ()))) for route in report["routes"])
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _esc(value: object) -> str:
    # Control characters are neither HTML text nor XML: shown as U+FFFD.
    return html.escape(_CONTROL.sub("\ufffd", str(value)), quote=True)


def _anchor(route_id: str) -> str:
    return "route-" + re.sub(r"[^A-Za-z0-9_-]", "_", route_id)


def _rows(pairs: Iterable[tuple[str, object]]) -> str:
    body = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in pairs)
    return f"<table>{body}</table>"


def _run_table(run: Mapping[str, Any]) -> str:
    skipped = ", ".join(f"{k} {v}" for k, v in run["skipped"].items()) or "none"
    return _rows(
        [
            ("inputs", ", ".join(run["inputs"])),
            ("legacy", run["legacy"]),
            ("new", run["new"]),
            ("started", run["started"]),
            ("finished", run["finished"]),
            ("requests", run["requests"]),
            ("replayed", run["replayed"]),
            ("not compared", skipped),
            ("noise share", "each route's" if run["noise"] is None else run["noise"]),
            (
                "fail under",
                "each route's min_match" if run["fail_under"] is None else run["fail_under"],
            ),
        ]
    )


def _rate(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.2%}"


def _routes_table(routes: Sequence[Mapping[str, Any]]) -> str:
    head = "".join(
        f"<th>{h}</th>"
        for h in (
            "route",
            "compared",
            "match",
            "mismatch",
            "noise",
            "errors",
            "rate",
            "verdict",
            "gate",
        )
    )
    rows = [
        f'<tr><td><a href="#{_anchor(r["id"])}">{_esc(r["id"])}</a></td><td>{r["compared"]}</td>'
        f"<td>{r['matched']}</td><td>{r['mismatched']}</td><td>{r['noise']}</td>"
        f"<td>{r['errors']}</td><td>{_rate(r['match_rate'])}</td>"
        f'<td class="{_esc(r["verdict"])}">{_esc(r["verdict"])}</td>{_gate(r)}</tr>'
        for r in routes
    ]
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _gate(route: Mapping[str, Any]) -> str:
    found = route.get("gate")
    if found is None:
        return "<td>-</td>"
    passed = found["passed"]
    return f'<td class="{"ready" if passed else "not_ready"}">{"pass" if passed else "FAIL"}</td>'


def _route(route: Mapping[str, Any], times: tuple[Sequence[float], Sequence[float]]) -> str:
    groups = route["differences"]
    anchor = _anchor(route["id"])
    parts = [f'<section id="{anchor}"><h2>{_esc(route["id"])}</h2>', _facts(route)]
    parts += ["<h3>Latency</h3>", cdf_svg(*times), "<h3>Difference groups</h3>"]
    parts.append(_groups_table(groups) if groups else "<p>none</p>")
    shown: dict[str, str] = {}  # an example kept by several groups is shown once
    parts += (_group_example(g, f"{anchor}-{n}", shown) for n, g in enumerate(groups))
    parts.append("</section>")
    return "\n".join(parts)


def _facts(route: Mapping[str, Any]) -> str:
    latency = route.get("latency", {})

    def ms(side: str) -> str:
        values = [latency.get(side, {}).get(p) for p in ("p50", "p90", "p99")]
        shown = " / ".join("-" if v is None else f"{v * 1000:.1f} ms" for v in values)
        return f"{shown} (p50 / p90 / p99)"

    counts = f"{route['matched']} match, {route['mismatched']} mismatch, {route['noise']} noise"
    return _rows(
        [
            ("verdict", f"{route['verdict']}: {route['verdict_reason']}"),
            ("gate", route["gate"]["reason"] if "gate" in route else "-"),
            ("compared", f"{route['compared']} ({counts})"),
            ("match rate", f"{_rate(route['match_rate'])} (min_match {route['min_match']:.2%})"),
            ("errors", ", ".join(f"{k} {v}" for k, v in route["error_reasons"].items()) or "none"),
            ("skipped", ", ".join(f"{k} {v}" for k, v in route["skipped"].items()) or "none"),
            ("legacy latency", ms("legacy")),
            ("new latency", ms("new")),
        ]
    )


def _groups_table(groups: Sequence[Mapping[str, Any]]) -> str:
    head = "<tr><th>signature</th><th>requests</th><th>mismatches</th><th>noisy</th></tr>"
    rows = "".join(
        f"<tr><td><code>{_esc(g['signature'])}</code></td><td>{g['count']}</td>"
        f"<td>{g['mismatches']}</td><td>{'yes' if g['noisy'] else 'no'}</td></tr>"
        for g in groups
    )
    return f"<table>{head}{rows}</table>"


def _group_example(group: Mapping[str, Any], anchor: str, shown: dict[str, str]) -> str:
    """The group's first example side by side (or a link to it, when already shown)."""
    if not group.get("examples"):
        return ""
    example = group["examples"][0]
    title = (
        f"<h4><code>{_esc(group['signature'])}</code>: {_esc(example['method'])} "
        f"<code>{_esc(example['target'])}</code></h4>"
    )
    key = json.dumps(example, sort_keys=True)
    if key in shown:
        return f'{title}<p>The same request as <a href="#{shown[key]}">above</a>.</p>'
    shown[key] = anchor
    differences = example["differences"]
    hit = _highlighter([d["path"] for d in differences])
    # This group's own differences first; the example's others after them.
    ordered = sorted(differences, key=lambda d: d["signature"] != group["signature"])
    listed = "".join(
        f"<tr><td><code>{_esc(d['path'])}</code></td><td>{_esc(d['kind'])}</td>"
        f"<td>{_esc(d['primary'])}</td><td>{_esc(d['candidate'])}</td></tr>"
        for d in ordered[:MAX_DIFFERENCES]
    )
    if len(ordered) > MAX_DIFFERENCES:
        listed += f'<tr><td colspan="4">{len(ordered) - MAX_DIFFERENCES} more</td></tr>'
    return (
        f'<div id="{anchor}">{title}'
        f"<table><tr><th>path</th><th>kind</th><th>legacy</th><th>new</th></tr>{listed}</table>"
        '<div class="sides">'
        f"<div><strong>legacy</strong>{_side(example['primary'], hit)}</div>"
        f"<div><strong>new</strong>{_side(example['candidate'], hit)}</div></div></div>"
    )


def _highlighter(paths: Sequence[str]) -> Callable[[str], bool]:
    """Is a line (by its path) at or under one of the differing paths?"""
    # `[*]` is the engine's "an element" of an unordered array: any index.
    patterns = [
        re.compile(re.escape(p).replace(r"\[\*\]", r"\[\d+\]") + r"(?:$|[.\[])")
        for p in paths
        if p.startswith("$")
    ]
    others = [p for p in paths if not p.startswith("$")]
    whole_body = "body" in others

    def hit(line: str) -> bool:
        if line.startswith("$"):
            return whole_body or any(p.match(line) for p in patterns)
        if line == "body":
            return whole_body
        return any(p == line or p.startswith(line + ".") for p in others)

    return hit


def _side(answer: Mapping[str, Any], hit: Callable[[str], bool]) -> str:
    lines = itertools.chain(
        [("status", f"HTTP {answer['status']}")],
        ((_header_path(n, v), f"{n}: {v}") for n, v in answer["headers"]),
        [("", "")],
        _body_lines(answer),
    )
    shown = list(itertools.islice(lines, MAX_LINES + 1))
    more = len(shown) > MAX_LINES
    text = "\n".join(
        f'<span class="hl">{_esc(t)}</span>' if path and hit(path) else _esc(t)
        for path, t in shown[:MAX_LINES]
    )
    return f"<pre>{text}{chr(10) + '… more lines not shown' if more else ''}</pre>"


def _header_path(name: str, value: str) -> str:
    lower = name.lower()
    if lower == "set-cookie":
        return f"headers.set-cookie.{value.partition('=')[0].strip()}"
    return f"headers.{lower}"


def _body_lines(answer: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    headers = {n.lower(): v for n, v in answer["headers"]}
    try:
        data = (
            base64.b64decode(answer["body"])
            if answer.get("body_encoding") == "base64"
            else str(answer["body"]).encode()
        )
        decoded = decode_body(data, headers.get("content-encoding"), _DECODE_LIMIT)
    except (binascii.Error, Overflow):
        decoded = None
    if decoded is None:
        yield "body", "(a body that cannot be shown)"
        return
    if is_json_type(media_type(headers.get("content-type"))):
        document = parse_body(decoded)
        if document is not NOT_JSON:
            yield from _json_lines(document, "$", "", "", 0)
            return
    try:
        text = decoded.decode()
    except UnicodeDecodeError:
        yield "body", f"({len(decoded)} bytes of binary)"
        return
    yield from (("body", line) for line in text.splitlines())
    if answer.get("body_truncated"):
        yield "body", "(cut: the report keeps 16 KiB of a body)"


def _json_lines(
    value: object, path: str, label: str, comma: str, depth: int
) -> Iterator[tuple[str, str]]:
    """Pretty JSON, one line per value, each line with its JSON path."""
    pad = "  " * depth
    items: list[tuple[str | int, object]]
    if isinstance(value, dict) and value:
        opening, closing, items = "{", "}", list(value.items())
    elif isinstance(value, list) and value:
        opening, closing, items = "[", "]", list(enumerate(value))
    else:
        yield path, f"{pad}{label}{json.dumps(value, ensure_ascii=False)}{comma}"
        return
    yield path, f"{pad}{label}{opening}"
    last = len(items) - 1
    for index, (key, item) in enumerate(items):
        name = "" if isinstance(key, int) else json.dumps(key, ensure_ascii=False) + ": "
        yield from _json_lines(item, child_path(path, key), name, "," * (index < last), depth + 1)
    yield path, f"{pad}{closing}{comma}"
