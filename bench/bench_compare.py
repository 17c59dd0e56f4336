"""The comparison engine on a typical JSON pair against `json.loads(a) == json.loads(b)`.

The pair is a club's events list of about 2 KiB (ten events), the candidate
differing from the primary the way a real candidate does: every
`updated_at` (ignored by the rule `$.events[*].updated_at`), the order of
some `tags` (unordered by `$.events[*].tags`), and a few real changes (a
booked count, a cancelled flag, a dropped tag, a renamed venue). 64 such
pairs, built from different seeds, are compared in each round; `compare`
gets the whole answers (status, six headers, body) and the baseline the two
bodies. Rounds are interleaved (engine, baseline, orjson baseline, ...) and
the median time of each is reported with its ratio to the json baseline.
"""

from __future__ import annotations

import json
import platform
import random
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from bench._results import markdown_table, record
from proxy.shadow.compare import compare
from proxy.shadow.model import Answer, CompareRules

if TYPE_CHECKING:
    from collections.abc import Callable

ROUNDS = 9
PAIRS = 64
REPEATS = 20  # passes over the pairs per round
TARGET = 5_000  # comparisons per second, from the issue

RULES = CompareRules(ignore_json=("$.events[*].updated_at",), unordered=("$.events[*].tags",))
TAGS = ["outdoor", "family", "members", "paid", "juniors", "seniors", "weekend"]


def _events(rng: random.Random) -> dict[str, Any]:
    events = [
        {
            "id": 4100 + i,
            "title": f"Session {i}",
            "starts_at": f"2026-12-{i + 1:02d}T09:30:00Z",
            "venue": {"id": 7, "name": "North pitch"},
            "tags": rng.sample(TAGS, 3),
            "capacity": 24,
            "booked": rng.randrange(24),
            "cancelled": False,
            "updated_at": f"2026-11-20T10:{i:02d}:00Z",
        }
        for i in range(10)
    ]
    return {"club_id": 7, "events": events, "page": {"next": None, "size": 10}}


def _candidate(primary: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    candidate: dict[str, Any] = json.loads(json.dumps(primary))
    events = candidate["events"]
    for event in events:
        event["updated_at"] = event["updated_at"].replace("10:", "12:")  # ignored
    for event in rng.sample(events, 3):
        event["tags"].reverse()  # unordered: no difference
    events[2]["booked"] += 1
    events[5]["cancelled"] = True
    events[7]["tags"] = events[7]["tags"][:2]
    events[8]["venue"]["name"] = "South pitch"
    return candidate


def _answer(document: dict[str, Any], request_id: int) -> Answer:
    body = json.dumps(document, separators=(",", ":")).encode()
    headers = (
        ("Content-Type", "application/json; charset=utf-8"),
        ("Content-Length", str(len(body))),
        ("Date", "Thu, 26 Nov 2026 16:09:00 GMT"),
        ("Server", "club-api"),
        ("X-Request-Id", f"req-{request_id}"),
        ("Cache-Control", "no-store"),
    )
    return Answer(status=200, headers=headers, body=body)


def _pairs() -> list[tuple[Answer, Answer]]:
    pairs = []
    for seed in range(PAIRS):
        rng = random.Random(seed)
        primary = _events(rng)
        pairs.append((_answer(primary, 2 * seed), _answer(_candidate(primary, rng), 2 * seed + 1)))
    return pairs


def _engine(a: Answer, b: Answer) -> object:
    return compare(a, b, RULES)


def _json_equal(a: Answer, b: Answer) -> object:
    return json.loads(a.body) == json.loads(b.body)


def _orjson_equal(a: Answer, b: Answer) -> object:
    return orjson.loads(a.body) == orjson.loads(b.body)


def _time(fn: Callable[[Answer, Answer], object], pairs: list[tuple[Answer, Answer]]) -> float:
    """Seconds per comparison over REPEATS passes."""
    start = time.perf_counter()
    for _ in range(REPEATS):
        for a, b in pairs:
            fn(a, b)
    return (time.perf_counter() - start) / (REPEATS * len(pairs))


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    pairs = _pairs()
    differences = compare(*pairs[0], RULES)
    fns: dict[str, Callable[[Answer, Answer], object]] = {
        "compare(primary, candidate, rules)": _engine,
        "json.loads(a) == json.loads(b) (baseline)": _json_equal,
        "orjson.loads(a) == orjson.loads(b)": _orjson_equal,
    }
    for fn in fns.values():  # warm-up
        _time(fn, pairs)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(ROUNDS):
        for name, fn in fns.items():
            samples[name].append(_time(fn, pairs))
    base = statistics.median(samples["json.loads(a) == json.loads(b) (baseline)"])
    rows = []
    for name, times in samples.items():
        median = statistics.median(times)
        rows.append([name, f"{1 / median:,.0f}", f"{median * 1e6:.1f}", f"{median / base:.2f}x"])
    table = markdown_table(["comparison", "pairs/s", "us per pair", "time vs baseline"], rows)
    engine = statistics.median(samples["compare(primary, candidate, rules)"])
    size = statistics.mean(len(a.body) for a, _ in pairs)
    note = (
        f"{PAIRS} pairs of a club events list ({size / 1024:.1f} KiB JSON, 10 events) with "
        f"`ignore_json: {list(RULES.ignore_json)}` and `unordered: {list(RULES.unordered)}`; "
        f"each pair gives {len(differences)} differences "
        f"({', '.join(sorted({d.signature for d in differences}))}). "
        f"Median of {ROUNDS} interleaved rounds of {REPEATS} passes, one process, one core "
        f"({_cpu()}). Target: {TARGET:,} comparisons/s; "
        f"measured {1 / engine:,.0f}/s ({'met' if 1 / engine >= TARGET else 'NOT met'})."
    )
    print(note)
    print(table)
    record("compare", f"{note}\n\n{table}")


if __name__ == "__main__":
    main()
