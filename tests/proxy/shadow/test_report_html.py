"""report.html: one self-contained, well-formed page; differing paths highlighted side by side."""

from __future__ import annotations

import gzip
import html
import json
import re
import xml.etree.ElementTree as ET
from typing import Any

from proxy.routing.model import NEW, Shadow
from proxy.shadow.compare import compare
from proxy.shadow.model import Answer, CompareRules, Example
from proxy.shadow.report_html import render_html
from proxy.shadow.results import ShadowBook
from proxy.shadow.runreport import build_report

JSON = (("Content-Type", "application/json"),)
RUN: dict[str, Any] = {
    "inputs": ["capture.jsonl"],
    "started": "2026-12-08T10:00:00+00:00",
    "finished": "2026-12-08T10:00:01+00:00",
    "requests": 1,
    "replayed": 1,
    "excluded": 0,
    "skipped": {},
    "legacy": "legacy-side",
    "new": "new-side",
    "noise": None,
    "fail_under": None,
}
HIGHLIGHT = re.compile(r'<span class="hl">(.*?)</span>')


def answer(
    body: object, *, status: int = 200, headers: tuple[tuple[str, str], ...] = JSON
) -> Answer:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Answer(status=status, headers=headers, body=data, latency=0.01)


async def page(
    primary: Answer,
    candidate: Answer,
    *,
    rules: CompareRules | None = None,
    latencies: tuple[list[float], list[float]] = ([0.01, 0.02], [0.015, 0.03]),
) -> str:
    book = ShadowBook()
    book.configure({"items": Shadow(to=NEW)})
    differences = compare(primary, candidate, rules or CompareRules())
    example = Example(
        at=1.0,
        method="GET",
        target="/api/items?q=1",
        request_headers=(("Host", "club.example"),),
        primary=primary,
        candidate=candidate,
        secondary=None,
        differences=differences,
    )
    book.compared("items", differences, None, lambda: example)
    report = await build_report(book, lambda _: latencies, dict(RUN), fail_under=None)
    return render_html(report, {"items": latencies})


def highlighted(text: str) -> list[str]:
    return [html.unescape(line).strip() for line in HIGHLIGHT.findall(text)]


async def test_the_page_is_self_contained_and_well_formed() -> None:
    text = await page(answer({"a": 1}), answer({"a": 2}))
    ET.fromstring(text)  # well-formed: every tag closed, every entity known
    lowered = text.lower()
    for fetches in ("<script", "src=", "url(", "@import", "<link", "<img", "<iframe", "<object"):
        assert fetches not in lowered
    assert "http://" not in lowered
    assert "https://" not in lowered
    assert all(href.startswith("#") for href in re.findall(r'href="([^"]*)"', text))
    assert "Content-Security-Policy" in text
    assert "default-src &#x27;none&#x27;" in text or "default-src 'none'" in text


async def test_differing_json_paths_are_highlighted_on_both_sides() -> None:
    primary = {"a": 1, "b": {"c": 2}, "items": [{"x": 1}, {"x": 2}], "gone": True}
    candidate = {"a": 1, "b": {"c": 3}, "items": [{"x": 1}, {"x": 5}], "new": "yes"}
    text = await page(answer(primary), answer(candidate))
    marked = highlighted(text)
    # legacy's and new's value of each differing path; `gone` only legacy has, `new` only new.
    assert marked == ['"c": 2', '"x": 2', '"gone": true', '"c": 3', '"x": 5', '"new": "yes"']
    assert "$.items[1].x" in text  # the example's concrete path, listed
    assert "changed:$.items[*].x" in text  # its group


async def test_status_and_header_differences_are_highlighted() -> None:
    primary = answer({"a": 1}, headers=(*JSON, ("Cache-Control", "max-age=60")))
    candidate = answer({"a": 1}, status=404, headers=(*JSON, ("Cache-Control", "no-store")))
    marked = highlighted(await page(primary, candidate))
    assert marked == [
        "HTTP 200",
        "Cache-Control: max-age=60",
        "HTTP 404",
        "Cache-Control: no-store",
    ]


async def test_an_unordered_array_and_an_encoded_body() -> None:
    zipped = (*JSON, ("Content-Encoding", "gzip"))
    primary = answer(gzip.compress(b'{"items": [1, 2, 3]}'), headers=zipped)
    candidate = answer(gzip.compress(b'{"items": [3, 2, 4]}'), headers=zipped)
    text = await page(primary, candidate, rules=CompareRules(unordered=("$.items",)))
    # Shown decoded; the engine's `$.items[*]` marks every element.
    assert highlighted(text) == ["1,", "2,", "3", "3,", "2,", "4"]


async def test_every_value_is_escaped() -> None:
    evil = "</pre><script>alert(1)</script>\x01"
    text = await page(answer({"name": evil}), answer({"name": "ok"}))
    assert "<script" not in text.lower()
    assert "&lt;/pre&gt;&lt;script&gt;" in text
    ET.fromstring(text)  # the control character was replaced, not written


async def test_text_bodies_are_highlighted_whole() -> None:
    plain = (("Content-Type", "text/plain"),)
    text = await page(answer(b"one\ntwo", headers=plain), answer(b"one\nthree", headers=plain))
    assert highlighted(text) == ["one", "two", "one", "three"]


async def test_the_latency_plot_has_both_sides() -> None:
    text = await page(answer({"a": 1}), answer({"a": 2}))
    svg = text[text.index("<svg") : text.index("</svg>")]
    assert svg.count("<polyline") == 2
    assert 'class="legacy"' in svg
    assert 'class="new"' in svg
    nothing = await page(answer({"a": 1}), answer({"a": 2}), latencies=([], []))
    assert "<svg" not in nothing
    assert "no compared requests" in nothing
