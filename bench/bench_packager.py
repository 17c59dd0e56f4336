"""Packager pack+unpack throughput against plain orjson + gzip + base64 in the same run.

Two JSON values: about 200 B (below the default 1 KiB compress threshold, so
the Packager writes ``json:plain:``) and about 50 KiB (``json:gzip:``). The
baseline does what a hand-written cache codec would: ``orjson.dumps`` then
``gzip.compress(mtime=0)`` then base64, and back with ``gzip.decompress``.
The rounds are interleaved (Packager, baseline, Packager, ...) and the
median of each is reported with their ratio (Packager time / baseline time).
"""

from __future__ import annotations

import base64
import gzip
import statistics
import time
from typing import TYPE_CHECKING, Any

import orjson

from bench._results import markdown_table, record
from legacy_compat import Packager

if TYPE_CHECKING:
    from collections.abc import Callable

ROUNDS = 7


def _value(target: int) -> dict[str, Any]:
    members: list[dict[str, Any]] = []
    i = 0
    while len(orjson.dumps({"event_id": 17, "members": members})) < target:
        members.append({"id": i, "name": f"member {i}", "paid": i % 3 == 0, "score": i * 1.5})
        i += 1
    return {"event_id": 17, "members": members}


def _baseline(value: Any) -> Any:
    text = base64.b64encode(gzip.compress(orjson.dumps(value), compresslevel=6, mtime=0)).decode()
    return orjson.loads(gzip.decompress(base64.b64decode(text)))


def _round_trip(packer: Packager) -> Callable[[Any], Any]:
    def run(value: Any) -> Any:
        return packer.unpack(packer.pack(value))

    return run


def _time(fn: Callable[[Any], Any], value: Any, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn(value)
    return time.perf_counter() - start


def _case(label: str, value: Any, n: int) -> list[list[str]]:
    packers = {
        "Packager()": Packager(),
        "Packager(compress_threshold=0)": Packager(compress_threshold=0),
    }
    fns: dict[str, Callable[[Any], Any]] = {name: _round_trip(p) for name, p in packers.items()}
    fns["baseline orjson+gzip+b64"] = _baseline
    for fn in fns.values():  # warm-up
        _time(fn, value, max(1, n // 10))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(ROUNDS):
        for name, fn in fns.items():
            samples[name].append(_time(fn, value, n) / n)
    base = statistics.median(samples["baseline orjson+gzip+b64"])
    rows = []
    for name, times in samples.items():
        med = statistics.median(times)
        packed = Packager().pack(value) if name == "Packager()" else ""
        form = packed.split(":", 2)[1] if packed else ""
        rows.append(
            [
                label,
                name + (f" (writes {form})" if form else ""),
                f"{1 / med:,.0f}",
                f"{med * 1e6:.1f}",
                f"{med / base:.2f}x",
            ]
        )
    return rows


def main() -> None:
    small, large = _value(200), _value(50 * 1024)
    rows = _case(f"{len(orjson.dumps(small))} B JSON", small, 20_000)
    rows += _case(f"{len(orjson.dumps(large)) // 1024} KiB JSON", large, 200)
    table = markdown_table(
        ["value", "codec", "pack+unpack/s", "us per op", "time vs baseline"], rows
    )
    note = (
        f"Median of {ROUNDS} interleaved rounds, one process, gzip level 6 on both sides. "
        "`Packager()` leaves the small value uncompressed (below its 1 KiB threshold); "
        "`compress_threshold=0` forces gzip so the codec cost is compared like for like."
    )
    print(table)
    record("packager", f"{note}\n\n{table}")


if __name__ == "__main__":
    main()
