"""Live shadow: what copying every request to a candidate costs the primary, on loopback.

One run starts the sides (bench/_sides.py, one process each: the primary
upstream and the candidates `same`, `sleep`, `fail` and `500`, all answering a
2.2 KiB JSON events list or failing as named) and, per request path (the fast
lane, and `--no-fast-lane`) and per copy cap (CONFIGS: `--shadow-rate 200`,
the default a user gets, and `--shadow-rate 0`, no cap: the raw cost), two
`club-proxy run --workers 1` processes on one routes.yaml: `/plain` (no
shadow) and `/shadow-<candidate>` routes on the same primary, each with
`shadow: {to: <candidate>, sample: 1.0, noise: 0, timeout: 1s}`. Process "A"
takes the load for /plain, /shadow-same, /shadow-fail and /shadow-500,
process "B" for /plain and /shadow-sleep: a hung candidate could keep a
process's shadow queue full (1,024 copies, 16 workers, 1 s timeout), which
would drop the copies of the next route measured there (the runtime now
pauses a failing candidate's route, `candidate_down`; the split is kept so
the figures compare with the earlier runs).

1. Saturation: wrk -t2 -c32 (closed loop) on A's /plain and /shadow-same,
   per cap, interleaved. /shadow-same's run gives the comparisons/s the
   engine sustains when the proxy is saturated, and the copies it drops
   meanwhile.
2. Constant rate, at two offered rates per path, the same for both caps:
   "half", half /plain's saturation rate (BENCH_LOAD_SHARE; the issue's
   figure), every route; and "low", half the comparisons/s the engine
   sustained with no cap (BENCH_LOW_SHARE), /plain and /shadow-same, a rate
   at which every copy can be compared when nothing caps them. An open-loop
   generator (below) offers the rate; cells are interleaved over
   BENCH_ROUNDS rounds, the order rotating. Per cell: latency p50/p99 from
   each request's scheduled send time (no coordinated omission) and from its
   actual send, the proxy's CPU (/proc utime+stime) per request, the whole
   machine's busy share (/proc/stat), and the route's /-/shadow counts
   (compared, matched, errors and skips by reason). A cell ends when every
   answer is in and every copy is accounted for (the queue has drained; at
   most SLEEP_SETTLE s for the hung candidate), so cells do not bleed into
   each other and the CPU of a copy done after its request's answer is
   counted. Ratios are against /plain on the same process in the same
   round; medians over rounds, (min-max) the noise figure.
3. py-spy profiles of the fast-lane proxy: /shadow-same with no cap at the
   low rate (what a compared copy costs) and with the default cap at the half
   rate (what a user's proxy does under the issue's load). BENCH_PROFILE=0
   skips them.

The generator: uvloop, 64 keep-alive connections opened before the cell, a
schedule of one request every 1/rate s; every ~1 ms tick sends all requests
due on idle connections, the others wait in a FIFO for the next free one
(their wait counts: latency is from the schedule). Its timer granularity
(uvloop: 1 ms) puts up to a tick between schedule and send on every request,
in both cells of a ratio: that tick lag is reported, and the from-send
latency beside the from-schedule one.

Knobs: BENCH_DURATION (seconds per constant-rate cell, 4), BENCH_ROUNDS (3),
BENCH_SATURATION_DURATION (seconds per wrk run, 3), BENCH_LOAD_SHARE (0.5),
BENCH_LOW_SHARE (0.5), BENCH_PROFILE (1). About 8 minutes with the defaults
(twice the cells of the single-cap version).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import gc
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter
from typing import Final, cast

import uvloop

from bench._results import markdown_table, record
from bench._sides import BODY
from bench.bench_proxy import free_port, proc_cpu_seconds, summarise_profile, wait_http, wrk

ROOT = Path(__file__).resolve().parent.parent
DURATION = float(os.environ.get("BENCH_DURATION", "4"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
SATURATION_DURATION = int(os.environ.get("BENCH_SATURATION_DURATION", "3"))
SATURATION_RUNS = 2
LOAD_SHARE = float(os.environ.get("BENCH_LOAD_SHARE", "0.5"))
LOW_SHARE = float(os.environ.get("BENCH_LOW_SHARE", "0.5"))
PROFILE = os.environ.get("BENCH_PROFILE", "1") != "0"
CONNECTIONS: Final = 64
TICK: Final = 0.001
DRAIN: Final = 10.0  # seconds to wait for the last answers after the last send
SETTLE: Final = 20.0  # seconds to wait for the copies still queued after the last answer
SLEEP_SETTLE: Final = 5.0  # the same for the hung candidate (1 s timeouts, then candidate_down)
GOAL: Final = 1.1
SERVED_ALL: Final = 0.97  # below this share of the offered rate served, a cell is overloaded
DROPPED_FEW: Final = 0.1  # the share of dropped copies below which a per-copy cost is given

PATHS: Final = {"fast lane": (), "aiohttp path": ("--no-fast-lane",)}
# The per-process cap on copies per second: the default a user gets, and none (the raw cost).
CONFIGS: Final = {"cap 200": ("--shadow-rate", "200"), "no cap": ("--shadow-rate", "0")}
UNCAPPED: Final = "no cap"
CANDIDATES: Final = ("same", "sleep", "fail", "500")
WHAT: Final = {
    "plain": "no shadow (baseline)",
    "same": "candidate answers the same JSON",
    "sleep": "candidate sleeps 5 s (shadow timeout 1 s)",
    "fail": "candidate resets the connection",
    "500": "candidate answers 500",
}
# The cells of each load level: (process, route). Process A takes the routes whose
# copies end (see the module docstring); B the hung candidate's.
LEVELS: Final = {
    "half": (
        ("A", "plain"),
        ("A", "same"),
        ("A", "fail"),
        ("A", "500"),
        ("B", "plain"),
        ("B", "sleep"),
    ),
    "low": (("A", "plain"), ("A", "same")),
}

ROUTES = """version: 1
upstreams:
  primary: {{url: "http://127.0.0.1:{primary}", max_connections: 512, keepalive_timeout: 30s}}
{candidates}
default: primary
routes:
  - {{id: plain, match: "GET /plain", to: primary}}
{shadowed}
"""


def routes_yaml(ports: dict[str, int]) -> str:
    candidates = "\n".join(
        f'  cand-{name}: {{url: "http://127.0.0.1:{ports[name]}"}}' for name in CANDIDATES
    )
    shadowed = "\n".join(
        f'  - {{id: shadow-{name}, match: "GET /shadow-{name}", to: primary, '
        f"shadow: {{to: cand-{name}, sample: 1.0, noise: 0, timeout: 1s}}}}"
        for name in CANDIDATES
    )
    return ROUTES.format(primary=ports["primary"], candidates=candidates, shadowed=shadowed)


def route_path(route: str) -> str:
    return "/plain" if route == "plain" else f"/shadow-{route}"


# --- the open-loop generator -------------------------------------------------------


class _Conn(asyncio.Protocol):
    """One keep-alive connection: one request at a time, answers parsed by Content-Length."""

    def __init__(self, load: _Load) -> None:
        self.load = load
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.need = -1
        self.status = 0
        self.scheduled = 0.0
        self.sent = 0.0
        self.busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:  # noqa: ARG002
        self.transport = None
        self.load.lost(self)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data
        while True:
            if self.need < 0:
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    break
                head = buffer[:end].lower()
                at = head.find(b"\r\ncontent-length:")
                length = 0
                if at >= 0:
                    stop = head.find(b"\r\n", at + 2)
                    length = int(head[at + 17 : stop if stop >= 0 else len(head)])
                self.status = int(buffer[9:12])
                self.need = end + 4 + length
            if len(buffer) < self.need:
                break
            buffer = buffer[self.need :]
            self.need = -1
            self.load.answered(self)
        self.buffer = buffer


@dataclass(slots=True)
class _Load:
    request: bytes
    idle: collections.deque[_Conn] = field(default_factory=collections.deque)
    waiting: collections.deque[float] = field(default_factory=collections.deque)
    latency: list[float] = field(default_factory=list)
    service: list[float] = field(default_factory=list)
    lag: list[float] = field(default_factory=list)  # tick to schedule: the generator's own
    outstanding: int = 0
    waited: int = 0  # requests that found every connection busy
    not_ok: int = 0
    failed: int = 0
    last_answer: float = 0.0

    def dispatch(self, scheduled: float, now: float) -> None:
        self.outstanding += 1
        self.lag.append(now - scheduled)
        if self.idle:
            self.send(self.idle.pop(), scheduled)
        else:
            self.waited += 1
            self.waiting.append(scheduled)

    def send(self, conn: _Conn, scheduled: float) -> None:
        conn.scheduled, conn.sent, conn.busy = scheduled, perf_counter(), True
        assert conn.transport is not None
        conn.transport.write(self.request)

    def answered(self, conn: _Conn) -> None:
        now = self.last_answer = perf_counter()
        conn.busy = False
        self.outstanding -= 1
        self.latency.append(now - conn.scheduled)
        self.service.append(now - conn.sent)
        if conn.status != 200:
            self.not_ok += 1
        if self.waiting:
            self.send(conn, self.waiting.popleft())
        else:
            self.idle.append(conn)

    def lost(self, conn: _Conn) -> None:
        with contextlib.suppress(ValueError):
            self.idle.remove(conn)
        if conn.busy:
            conn.busy = False
            self.outstanding -= 1
            self.failed += 1


@dataclass(frozen=True, slots=True)
class Load:
    """One constant-rate cell as the generator saw it (times in ms)."""

    sent: int
    answered: int
    not_ok: int
    failed: int  # connection lost, or no answer within DRAIN
    offered: float  # requests dispatched per second by the schedule's end
    served: float  # answers per second, first scheduled send to last answer
    waited: int  # requests that waited for a free connection (the proxy was behind)
    seconds: float  # first scheduled send to last answer
    p50: float
    p99: float
    service_p50: float
    service_p99: float
    lag_p50: float
    lag_p99: float
    generator_cpu: float  # seconds


def quantile(values: list[float], q: float) -> float:
    """Nearest-rank quantile (inf for an empty list)."""
    if not values:
        return math.inf
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


async def _open_loop(port: int, path: str, rate: float, duration: float) -> Load:
    loop = asyncio.get_running_loop()
    load = _Load(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    conns = []
    for _ in range(CONNECTIONS):
        _, conn = await loop.create_connection(functools.partial(_Conn, load), "127.0.0.1", port)
        conns.append(conn)
        load.idle.append(conn)
    await asyncio.sleep(0.1)
    total = round(rate * duration)
    interval = 1.0 / rate
    cpu = time.process_time()
    gc.collect()
    gc.disable()
    try:
        start = perf_counter() + 0.002
        done = 0
        while done < total:
            now = perf_counter()
            due = min(total, int((now - start) / interval) + 1)
            while done < due:
                load.dispatch(start + done * interval, now)
                done += 1
            await asyncio.sleep(TICK)
        window_end = perf_counter()
        deadline = window_end + DRAIN
        while load.outstanding > 0 and perf_counter() < deadline:
            await asyncio.sleep(0.005)
    finally:
        gc.enable()
        for conn in conns:
            if conn.transport is not None:
                conn.transport.close()
    cpu = time.process_time() - cpu
    # Unanswered requests count as failed, and as infinitely late in the percentiles.
    missing = total - len(load.latency)
    latency = load.latency + [math.inf] * missing
    seconds = max(load.last_answer, window_end) - start
    return Load(
        sent=total,
        answered=len(load.latency),
        not_ok=load.not_ok,
        failed=missing,
        offered=total / (window_end - start),
        served=len(load.latency) / seconds,
        waited=load.waited,
        seconds=seconds,
        p50=quantile(latency, 0.5) * 1e3,
        p99=quantile(latency, 0.99) * 1e3,
        service_p50=quantile(load.service, 0.5) * 1e3,
        service_p99=quantile(load.service, 0.99) * 1e3,
        lag_p50=quantile(load.lag, 0.5) * 1e3,
        lag_p99=quantile(load.lag, 0.99) * 1e3,
        generator_cpu=cpu,
    )


def open_loop(port: int, path: str, rate: float, duration: float = DURATION) -> Load:
    return uvloop.run(_open_loop(port, path, rate, duration))


# --- the proxies ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Proxy:
    path: str  # "fast lane" or "aiohttp path"
    config: str  # "cap 200" or "no cap"
    name: str  # "A" or "B"
    port: int
    admin: int
    process: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid

    def url(self, route: str) -> str:
        return f"http://127.0.0.1:{self.port}{route_path(route)}"

    def counts(self) -> dict[str, collections.Counter[str]]:
        """Each shadowed route's /-/shadow counts, flattened (compared, matched, reasons...)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/-/shadow", timeout=10) as r:
            report = json.load(r)
        found: dict[str, collections.Counter[str]] = {}
        for route in report["routes"]:
            counts: collections.Counter[str] = collections.Counter()
            for key in ("compared", "matched", "mismatched", "errors"):
                counts[key] = int(route[key])
            counts.update({k: int(v) for k, v in route["error_reasons"].items()})
            counts.update({k: int(v) for k, v in route["skipped"].items()})
            counts["skipped"] = sum(int(v) for v in route["skipped"].values())
            found[str(route["id"]).removeprefix("shadow-")] = counts
        return found


def accounted(counts: collections.Counter[str]) -> int:
    """Copies with an outcome: compared, failed on a side, or skipped for a reason."""
    return counts["compared"] + counts["errors"] + counts["skipped"]


def start_proxy(tmp: Path, path: str, config: str, name: str, routes: Path) -> Proxy:
    port, admin = free_port(), free_port()
    exe = str(Path(sys.executable).with_name("club-proxy"))
    cmd = [exe, "run", "--routes", str(routes), "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--admin-port", str(admin), "--workers", "1", "--log-level", "WARNING"]
    cmd += [*PATHS[path], *CONFIGS[config], "--shadow-workers", "16", "--shadow-queue", "1024"]
    stem = f"proxy-{path.replace(' ', '-')}-{config.replace(' ', '-')}-{name}"
    # Access log on (the default) to /dev/null, as bench_proxy: its cost is real.
    with (tmp / f"{stem}.stderr").open("wb") as stderr:
        process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=stderr)
    return Proxy(path=path, config=config, name=name, port=port, admin=admin, process=process)


def start_side(port: int, mode: str, tmp: Path) -> subprocess.Popen[bytes]:
    with (tmp / f"side-{mode}-{port}.stderr").open("wb") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "bench._sides", str(port), mode],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            cwd=ROOT,
        )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_accounted(proxy: Proxy, route: str, target: int, timeout: float = SETTLE) -> float:
    """Seconds until `route`'s accounted copies reach `target` (or the timeout)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if accounted(proxy.counts()[route]) >= target:
            break
        time.sleep(0.05)
    return time.monotonic() - start


# --- measurements -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Saturation:
    plain_rps: float
    shadow_rps: float
    compared_per_s: float
    queue_full_per_s: float
    rate_limited_per_s: float
    errors: int


def saturation(proxy: Proxy) -> Saturation:
    plain = wrk(proxy.url("plain"), 32, SATURATION_DURATION)
    before = proxy.counts()["same"]
    shadow = wrk(proxy.url("same"), 32, SATURATION_DURATION)
    delta = proxy.counts()["same"] - before  # before the backlog drains: the run's own
    settle_quiet(proxy, "same")  # the copies still queued
    return Saturation(
        plain_rps=plain.rps,
        shadow_rps=shadow.rps,
        compared_per_s=delta["compared"] / SATURATION_DURATION,
        queue_full_per_s=delta["queue_full"] / SATURATION_DURATION,
        rate_limited_per_s=delta["rate_limited"] / SATURATION_DURATION,
        errors=plain.errors + shadow.errors,
    )


def settle_quiet(proxy: Proxy, route: str, timeout: float = SETTLE) -> None:
    """Wait until the route's counts stop moving for 0.3 s."""
    start, last = time.monotonic(), -1
    while time.monotonic() - start < timeout:
        now = accounted(proxy.counts()[route])
        if now == last:
            return
        last = now
        time.sleep(0.3)


def box_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of the whole machine (/proc/stat), every process's."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # guest time is already in user
    return total - idle, total


@dataclass(frozen=True, slots=True)
class Cell:
    load: Load
    cpu_us: float  # proxy CPU per request sent, microseconds
    cpu_seconds: float
    proxy_core: float  # proxy CPU seconds per second of load (share of one core)
    box_busy: float  # share of all cores busy during the cell, any process
    counts: collections.Counter[str]  # the route's /-/shadow deltas, after the settle
    compared_per_s: float  # compared during the load (first send to last answer)
    settle: float  # seconds from the last answer until every copy was accounted for


def run_cell(proxy: Proxy, route: str, rate: float) -> Cell:
    shadowed = route != "plain"
    before = proxy.counts()[route] if shadowed else collections.Counter()
    cpu = proc_cpu_seconds(proxy.pid)
    busy, total = box_ticks()
    load = open_loop(proxy.port, route_path(route), rate)
    busy, total = (now - then for now, then in zip(box_ticks(), (busy, total), strict=True))
    settle = 0.0
    during: collections.Counter[str] = collections.Counter()
    after: collections.Counter[str] = collections.Counter()
    if shadowed:
        during = proxy.counts()[route] - before
        # A hung candidate's copies end by timing out (1 s) or as candidate_down once
        # its route is paused: waited for, but only so long.
        settle = wait_accounted(
            proxy,
            route,
            accounted(before) + load.sent,
            SLEEP_SETTLE if route == "sleep" else SETTLE,
        )
        after = proxy.counts()[route] - before
    cpu = proc_cpu_seconds(proxy.pid) - cpu
    return Cell(
        load=load,
        cpu_us=cpu / load.sent * 1e6,
        cpu_seconds=cpu,
        proxy_core=cpu / (load.seconds + settle),
        box_busy=busy / total if total else 0.0,
        counts=after,
        compared_per_s=during["compared"] / load.seconds,
        settle=settle,
    )


def profile(
    proxy: Proxy, route: str, rate: float, tmp: Path
) -> tuple[list[list[str]], list[list[str]], int]:
    """py-spy's self and inclusive tables for the proxy while `route` gets `rate`."""
    spy = Path(sys.executable).with_name("py-spy")
    out = tmp / f"profile-{proxy.config.replace(' ', '-')}-{route}.txt"
    seconds = max(3, int(DURATION))
    cmd = [str(spy), "record", "--pid", str(proxy.pid), "--duration", str(seconds)]
    # Blocking sampling (the default), as bench_proxy.
    cmd += ["--rate", "200", "--format", "raw", "-o", str(out)]
    spy_proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    open_loop(proxy.port, route_path(route), rate, seconds + 1)
    spy_proc.wait(timeout=60)
    settle_quiet(proxy, route, SLEEP_SETTLE if route == "sleep" else SETTLE)
    return summarise_profile(out.read_text()) if out.exists() else ([], [], 0)


# --- report -------------------------------------------------------------------------

Key = tuple[str, str, str, str, str]  # (path, config, level, process, route)
Runs = dict[Key, list[Cell]]  # a cell per round
Sat = dict[tuple[str, str], list["Saturation"]]  # (path, config) -> a run each
Rates = dict[tuple[str, str], float]  # (path, level) -> offered req/s


def med(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float], fmt: str = "{:.2f}") -> str:
    return f"{fmt.format(min(values))}-{fmt.format(max(values))}"


def ms(value: float) -> str:
    return "unanswered" if math.isinf(value) else f"{value:.2f}"


def ratios(cells: list[Cell], base: list[Cell], attr: str) -> list[float]:
    return [getattr(c.load, attr) / getattr(b.load, attr) for c, b in zip(cells, base, strict=True)]


def ratio_cell(values: list[float]) -> str:
    if not all(math.isfinite(v) for v in values):
        return "unbounded (answers missing)"
    return f"**{med(values):.2f}x** ({spread(values)})"


def verdict(cells: list[Cell], base: list[Cell], rate: float) -> str:
    """The goal's verdict for a shadowed route's cells against /plain's."""
    p50, p99 = ratios(cells, base, "p50"), ratios(cells, base, "p99")
    served = med([c.load.served for c in cells]) / rate
    if served < SERVED_ALL:
        return f"**not met**: overloaded, {served:.0%} of the offered rate served"
    if not all(math.isfinite(v) for v in p50 + p99):
        return "**not met**"
    if med(p50) <= GOAL and med(p99) <= GOAL:
        return "met"
    if min(p50) <= GOAL and min(p99) <= GOAL:
        return "not met in the median (met in some rounds)"
    return "**not met**"


def keys() -> list[Key]:
    return [
        (path, config, level, proc, route)
        for path in PATHS
        for config in CONFIGS
        for level, cells in LEVELS.items()
        for proc, route in cells
    ]


def latency_table(runs: Runs, rates: Rates) -> str:
    rows = []
    for key in keys():
        path, config, level, proc, route = key
        cells, base = runs[key], runs[path, config, level, proc, "plain"]
        plain = route == "plain"
        p50, p99 = ratios(cells, base, "p50"), ratios(cells, base, "p99")
        s50, s99 = ratios(cells, base, "service_p50"), ratios(cells, base, "service_p99")
        rows.append(
            [
                path,
                config,
                f"{rates[path, level]:,.0f} ({level})",
                proc,
                f"`{route_path(route)}`",
                f"{med([c.load.served for c in cells]):,.0f}",
                f"{med([c.load.waited / c.load.sent for c in cells]) * 100:.0f}%",
                ms(med([c.load.p50 for c in cells])),
                ms(med([c.load.p99 for c in cells])),
                "1.00x" if plain else ratio_cell(p50),
                "1.00x" if plain else ratio_cell(p99),
                "-" if plain else verdict(cells, base, rates[path, level]),
                "-" if plain else f"{med(s50):.2f}x / {med(s99):.2f}x",
                f"{med([c.box_busy for c in cells]) * 100:.0f}%",
                f"{sum(c.load.not_ok for c in cells)}/{sum(c.load.failed for c in cells)}",
            ]
        )
    head = [
        "path",
        "copies/s cap",
        "offered req/s",
        "proc",
        "route",
        "served req/s",
        "waited for a connection",
        "p50 ms",
        "p99 ms",
        "p50 vs /plain (range)",
        "p99 vs /plain (range)",
        f"goal <= {GOAL}x",
        "from-send p50 / p99 vs /plain",
        "machine busy",
        "non-200 / unanswered",
    ]
    return markdown_table(head, rows)


OUTCOMES: Final = (
    "compared",
    "matched",
    "mismatched",
    "timeout",
    "candidate_error",
    "candidate_down",
    "rate_limited",
    "queue_full",
    "primary_error",
    "body_too_large",
)
# Copies a worker sent to the candidate (compared, or the candidate failed it).
HANDLED: Final = ("compared", "timeout", "candidate_error")
# Copies refused before anything was sent, to protect the clients.
DROPPED: Final = ("rate_limited", "candidate_down", "queue_full")


def handled(counts: collections.Counter[str]) -> int:
    return sum(counts[key] for key in HANDLED)


def dropped(counts: collections.Counter[str]) -> int:
    return sum(counts[key] for key in DROPPED)


def outcomes(cells: list[Cell]) -> str:
    total: collections.Counter[str] = collections.Counter()
    for c in cells:
        total += c.counts
    sent = sum(c.load.sent for c in cells)
    text = ", ".join(f"{key} {total[key]:,}" for key in OUTCOMES if total[key])
    if unaccounted := sent - accounted(total):
        text += f", still queued or in flight at the cell's end {unaccounted:,}"
    return f"{sent:,}: {text}"


def cpu_table(runs: Runs, rates: Rates) -> str:
    rows = []
    for key in keys():
        path, config, level, proc, route = key
        if route == "plain":
            continue
        cells, base = runs[key], runs[path, config, level, proc, "plain"]
        extra = [c.cpu_us - b.cpu_us for c, b in zip(cells, base, strict=True)]
        ratio = [c.cpu_us / b.cpu_us for c, b in zip(cells, base, strict=True)]
        # Extra CPU per copy a worker handled (compared or failed), where few were
        # dropped: a dropped copy costs too, and would be charged to the handled ones.
        per_copy = [
            (c.cpu_seconds - b.cpu_us * 1e-6 * c.load.sent) / handled(c.counts) * 1e6
            for c, b in zip(cells, base, strict=True)
            if handled(c.counts) and dropped(c.counts) <= DROPPED_FEW * c.load.sent
        ]
        rows.append(
            [
                path,
                config,
                f"{rates[path, level]:,.0f} ({level})",
                f"`{route_path(route)}`",
                f"{med([b.cpu_us for b in base]):.0f}",
                f"{med([c.cpu_us for c in cells]):.0f}",
                f"**{med(extra):+.0f}** ({spread(extra, '{:+.0f}')})",
                f"{med(ratio):.2f}x ({spread(ratio)})",
                f"{med(per_copy):.0f}" if per_copy else "-",
                (
                    f"{med([b.proxy_core for b in base]) * 100:.0f}% / "
                    f"{med([c.proxy_core for c in cells]) * 100:.0f}%"
                ),
                f"{med([c.compared_per_s for c in cells]):,.0f}",
                outcomes(cells),
                f"{med([c.settle for c in cells]):.2f}",
            ]
        )
    head = [
        "path",
        "copies/s cap",
        "offered req/s",
        "route",
        "/plain CPU us/req",
        "shadowed CPU us/req",
        "extra us/req (range)",
        "CPU vs /plain (range)",
        "extra us per copy handled",
        "proxy CPU, /plain / shadowed (of one core)",
        "compared/s",
        "requests: outcomes of their copies (all rounds)",
        "queue drain s",
    ]
    return markdown_table(head, rows)


def saturation_table(sat: Sat, rates: Rates) -> str:
    rows = []
    for path in PATHS:
        for config in CONFIGS:
            runs = sat[path, config]
            plain = [s.plain_rps for s in runs]
            shadow = [s.shadow_rps for s in runs]
            compared = [s.compared_per_s for s in runs]
            rows.append(
                [
                    path,
                    config,
                    f"{med(plain):,.0f} ({spread(plain, '{:,.0f}')})",
                    f"{med(shadow):,.0f} ({spread(shadow, '{:,.0f}')})",
                    f"{med([s.shadow_rps / s.plain_rps for s in runs]):.2f}x",
                    f"**{med(compared):,.0f}** ({spread(compared, '{:,.0f}')})",
                    f"{med([s.rate_limited_per_s for s in runs]):,.0f}",
                    f"{med([s.queue_full_per_s for s in runs]):,.0f}",
                    str(sum(s.errors for s in runs)),
                    f"**{rates[path, 'half']:,.0f}**",
                    f"**{rates[path, 'low']:,.0f}**",
                ]
            )
    head = [
        "path",
        "copies/s cap",
        "/plain req/s (range)",
        "/shadow-same req/s (range)",
        "/shadow-same vs /plain",
        "comparisons/s the engine sustained (range)",
        "copies rate_limited/s",
        "copies queue_full/s",
        "wrk errors",
        f"half: {LOAD_SHARE:g} x /plain (both caps)",
        f"low: {LOW_SHARE:g} x comparisons/s with no cap",
    ]
    return markdown_table(head, rows)


def generator_table(runs: Runs, rates: Rates) -> str:
    rows = []
    for path in PATHS:
        cells = [c for key, cs in runs.items() if key[0] == path for c in cs]
        offered = [
            c.load.offered / rates[key[0], key[2]]
            for key, cs in runs.items()
            if key[0] == path
            for c in cs
        ]
        rows.append(
            [
                path,
                f"{min(offered) * 100:.1f}%-{max(offered) * 100:.1f}%",
                f"{med([c.load.lag_p50 for c in cells]):.2f}",
                (
                    f"{med([c.load.lag_p99 for c in cells]):.2f} "
                    f"(max {max(c.load.lag_p99 for c in cells):.1f})"
                ),
                f"{med([c.load.generator_cpu / c.load.seconds for c in cells]) * 100:.0f}%",
            ]
        )
    head = [
        "path",
        "requests dispatched / scheduled per s (min-max over cells)",
        "tick lag p50 ms",
        "tick lag p99 ms (median, max over cells)",
        "generator CPU (of one core)",
    ]
    return markdown_table(head, rows)


def machine_note(load_before: str, load_after: str) -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (
        f"Machine: nproc {os.cpu_count()}, {cpu}, shared with other sessions; load average "
        f"(1/5/15 min) {load_before} at the start, {load_after} at the end (the machine-busy "
        "column below is every process's CPU during each cell). Python "
        f"{platform.python_version()}, uvloop everywhere. The 8 proxies, 5 sides and wrk or "
        "the generator share the two cores (one proxy takes load at a time)."
    )


def versus_plain(runs: Runs, key: Key) -> str:
    """'p50 1.19x (+0.18 ms), p99 ...' for a cell against /plain: medians over rounds."""
    path, config, level, proc, _ = key
    cells, base = runs[key], runs[path, config, level, proc, "plain"]
    parts = []
    for name in ("p50", "p99"):
        ratio = med(ratios(cells, base, name))
        added = med(
            [
                getattr(c.load, name) - getattr(b.load, name)
                for c, b in zip(cells, base, strict=True)
            ]
        )
        parts.append(f"{name} {ratio:.2f}x ({added:+.2f} ms)")
    return ", ".join(parts)


def drops(cells: list[Cell]) -> str:
    """'rate_limited 1,234, queue_full 5 of 9,999 copies' over all rounds."""
    total: collections.Counter[str] = collections.Counter()
    for c in cells:
        total += c.counts
    parts = [f"{key} {total[key]:,}" for key in DROPPED if total[key]]
    sent = sum(c.load.sent for c in cells)
    return f"{', '.join(parts) or 'none dropped'} of {sent:,} copies"


def summary(runs: Runs, sat: Sat, rates: Rates) -> str:
    lines = []
    for path in PATHS:
        for config in CONFIGS:
            engine = med([s.compared_per_s for s in sat[path, config]])
            for level, cells in LEVELS.items():
                rate = rates[path, level]
                key = (path, config, level, "A", "same")
                base, same = runs[path, config, level, "A", "plain"], runs[key]
                cpu = med([c.cpu_us - b.cpu_us for c, b in zip(same, base, strict=True)])
                plain_cpu = med([b.cpu_us for b in base])
                line = (
                    f"- {path}, {config}, {rate:,.0f} req/s ({level}): /shadow-same "
                    f"{versus_plain(runs, key)} against /plain, {verdict(same, base, rate)}; "
                    f"+{cpu:.0f} us proxy CPU per request over /plain's {plain_cpu:.0f} us "
                    f"({(cpu + plain_cpu) / plain_cpu:.1f}x); {drops(same)}"
                )
                others = [
                    f"{route}: {versus_plain(runs, (path, config, level, proc, route))}, "
                    f"{verdict(runs[path, config, level, proc, route], runs[path, config, level, proc, 'plain'], rate)}"
                    for proc, route in cells
                    if route not in {"plain", "same"}
                ]
                if others:
                    line += f". Failing candidates: {'; '.join(others)}"
                lines.append(line + ".")
            lines.append(
                f"- {path}, {config}: saturated by wrk -c32 on /shadow-same, the engine "
                f"compared {engine:,.0f}/s."
            )
    return "\n".join(lines)


def report(
    runs: Runs,
    sat: Sat,
    rates: Rates,
    profiles: list[tuple[str, tuple[list[list[str]], list[list[str]], int]]],
    *,
    machine: str,
    routes: str,
) -> str:
    setup = (
        "Setup: per path and per cap, two `club-proxy run --workers 1 --shadow-workers 16 "
        "--shadow-queue 1024` processes (fast lane; `--no-fast-lane` for the aiohttp path), "
        "`--shadow-rate 200` (the default: at most 200 copies/s per process, the rest "
        "`rate_limited`) or `--shadow-rate 0` (no cap: the raw cost), access log on to "
        "/dev/null, shadow results in memory. Sides: bench/_sides.py (raw asyncio on uvloop, one "
        f"process each), every 200 answer a {len(BODY):,} B JSON events list. Routes (one file "
        "for all eight proxies):"
    )
    procs = (
        "Process A takes /plain, /shadow-same, /shadow-fail, /shadow-500; process B /plain and "
        "/shadow-sleep, as in the earlier runs (a hung candidate used to keep the process's one "
        "shadow queue full for about a minute). A candidate failing 5 copies in a row is now "
        "paused for its route (`candidate_down`, 5 s doubling to 60 s); that state carries "
        "over from cell to cell and round to round, as it would in a running proxy. Every "
        "ratio is against /plain on the same process in the same round."
    )
    latency_intro = (
        f"{ROUNDS} interleaved rounds of {DURATION:g} s per cell, order rotating; median, "
        "(min-max) over rounds. Latency is from each request's scheduled send time (open "
        "loop: waiting for a connection counts); from-send times the same answers from their "
        "actual send. Served req/s: answers per second (below the offered rate when the proxy "
        "falls behind); waited: the requests that found all connections busy. Two offered rates per path: half /plain's saturation (the issue's), and "
        f"low = {LOW_SHARE:g} x the comparisons/s the engine sustained when saturated with no "
        "cap; both rates are the same for both caps."
    )
    generator = (
        "The load generator: an open-loop client in the bench process (uvloop, "
        f"{CONNECTIONS} keep-alive connections, the requests due sent every ~1 ms tick). "
        "Its tick lag (tick time minus scheduled time, whether or not a connection was free) "
        "is its own timing error, in every from-schedule figure on both sides of a ratio:"
    )
    cpu_intro = (
        "CPU: the proxy process's utime+stime from the cell's start until every copy was "
        f"accounted for (the queue drained; at most {SLEEP_SETTLE:g} s on /shadow-sleep), per "
        "request sent; extra = shadowed minus /plain in the same round. Per copy handled: the "
        "extra CPU divided by the copies a worker sent (compared, timeout or candidate_error), "
        f"given only where at most {DROPPED_FEW:.0%} were dropped (rate_limited, candidate_down "
        "or queue_full: a dropped copy has a cost of its own). "
        "compared/s: comparisons recorded between the cell's first send and last answer."
    )
    parts = [
        machine,
        "",
        setup,
        "",
        "```yaml",
        routes.strip(),
        "```",
        "",
        procs,
        "",
        (
            f"### Saturation (wrk -t2 -c32, {SATURATION_DURATION} s, {SATURATION_RUNS} runs "
            "per cap, interleaved) and the offered rates"
        ),
        "",
        saturation_table(sat, rates),
        "",
        "### (a), (b) Primary latency at a constant offered rate",
        "",
        latency_intro,
        "",
        latency_table(runs, rates),
        "",
        generator,
        "",
        generator_table(runs, rates),
        "",
        "### (c) Proxy CPU per shadowed request, and comparisons/s",
        "",
        cpu_intro,
        "",
        cpu_table(runs, rates),
        "",
        "### Summary",
        "",
        summary(runs, sat, rates),
    ]
    for title, (top_self, top_incl, samples) in profiles:
        parts += [
            "",
            f"### Profile: {title} (py-spy, {samples} samples, idle excluded)",
            "",
            markdown_table(["self time: function (file)", "share"], top_self),
            "",
            markdown_table(
                ["inclusive, below the event-loop trunk: function (file)", "share"], top_incl
            ),
        ]
    return "\n".join(parts)


# --- main ---------------------------------------------------------------------------


def skip_reason() -> str | None:
    if shutil.which("wrk") is None:
        return "missing wrk (apt-get install -y wrk)"
    if not Path(sys.executable).with_name("club-proxy").exists():
        return ".venv/bin/club-proxy missing (pip install -e .)"
    return None


def rotated(items: list[Key], by: int) -> list[Key]:
    by %= len(items)
    return items[by:] + items[:by]


Proxies = dict[tuple[str, str, str], Proxy]  # (path, config, "A" or "B")


def start_all(tmp: Path, stack: contextlib.ExitStack) -> tuple[Proxies, str]:
    """The sides and the eight proxies (stopped by `stack`); the routes.yaml text."""
    ports = {"primary": free_port(), **{name: free_port() for name in CANDIDATES}}
    sides = [start_side(ports["primary"], "same", tmp)]
    sides += [start_side(ports[name], name, tmp) for name in CANDIDATES]
    for side in sides:
        stack.callback(_stop, side)
    routes = tmp / "routes.yaml"
    routes.write_text(routes_yaml(ports))
    proxies = {
        (path, config, name): start_proxy(tmp, path, config, name, routes)
        for path in PATHS
        for config in CONFIGS
        for name in "AB"
    }
    for proxy in proxies.values():
        stack.callback(_stop, proxy.process)
    for proxy in proxies.values():
        wait_http(proxy.url("plain"))
        wait_http(f"http://127.0.0.1:{proxy.admin}/-/ready")
    return proxies, routes.read_text()


def measure_saturation(proxies: Proxies) -> Sat:
    sat: Sat = collections.defaultdict(list)
    pairs = [(path, config) for path in PATHS for config in CONFIGS]
    for run in range(SATURATION_RUNS):
        for path, config in pairs[run:] + pairs[:run]:
            sat[path, config].append(saturation(proxies[path, config, "A"]))
            print(f"  {path}, {config}: {sat[path, config][-1]}", flush=True)
    return sat


def measure_rounds(proxies: Proxies, rates: Rates) -> Runs:
    runs: Runs = collections.defaultdict(list)
    order = keys()
    for rnd in range(ROUNDS):
        for key in rotated(order, rnd * 11):
            path, config, level, proc, route = key
            cell = run_cell(proxies[path, config, proc], route, rates[path, level])
            runs[key].append(cell)
            load = cell.load
            print(
                f"  round {rnd} {path} {config} {level} {proc} {route_path(route)}: "
                f"served {load.served:,.0f}/s (waited {load.waited}) "
                f"p50 {ms(load.p50)} p99 {ms(load.p99)} ms "
                f"(from send {ms(load.service_p50)}/{ms(load.service_p99)}, tick lag p99 "
                f"{load.lag_p99:.2f}), CPU {cell.cpu_us:.0f} us/req "
                f"({cell.proxy_core * 100:.0f}% of a core, machine {cell.box_busy * 100:.0f}%), "
                f"{dict(cell.counts)}, settle {cell.settle:.2f}s",
                flush=True,
            )
    return runs


# What the warm-up loads: not the failing candidates (it would open their breakers).
WARM: Final = {"A": ("plain", "same"), "B": ("plain",)}
PROFILES: Final = (
    ("no cap", "A", "same", "low"),  # what a compared copy costs
    ("cap 200", "A", "same", "half"),  # what a user's proxy does under the load
)


def main() -> None:
    if reason := skip_reason():
        print(f"bench_shadow: SKIPPED, {reason}")
        return
    load_before = "/".join(Path("/proc/loadavg").read_text().split()[:3])
    spy = Path(sys.executable).with_name("py-spy")
    began = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="bench-shadow-") as tmp_name,
        contextlib.ExitStack() as stack,
    ):
        tmp = Path(tmp_name)
        proxies, routes = start_all(tmp, stack)
        print("warm-up", flush=True)
        for (_, _, name), proxy in proxies.items():
            for route in WARM[name]:
                wrk(proxy.url(route), 16, duration=1)
        for (_, _, name), proxy in proxies.items():
            if name == "A":
                settle_quiet(proxy, "same")
        print("saturation (wrk -c32)", flush=True)
        sat = measure_saturation(proxies)
        rates: Rates = {}
        for path in PATHS:
            plain = [s.plain_rps for config in CONFIGS for s in sat[path, config]]
            rates[path, "half"] = LOAD_SHARE * med(plain)
            rates[path, "low"] = LOW_SHARE * med([s.compared_per_s for s in sat[path, UNCAPPED]])
        print(f"offered rates: {rates}", flush=True)
        runs = measure_rounds(proxies, rates)
        profiles = []
        if PROFILE and spy.exists():
            print("profiles (py-spy)", flush=True)
            for config, proc, route, level in PROFILES:
                rate = rates["fast lane", level]
                title = f"fast lane, {config}, `{route_path(route)}` at {rate:,.0f} req/s ({level})"
                proxy = proxies["fast lane", config, proc]
                profiles.append((title, profile(proxy, route, rate, tmp)))
        load_after = "/".join(Path("/proc/loadavg").read_text().split()[:3])
    machine = machine_note(load_before, load_after)
    print(f"took {time.monotonic() - began:.0f} s", flush=True)
    record("shadow", report(runs, sat, rates, profiles, machine=machine, routes=routes))


if __name__ == "__main__":
    main()
