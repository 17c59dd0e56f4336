"""club-proxy vs nginx as a reverse proxy, side by side, on loopback.

One run starts an upstream nginx (static 200 B, 1 MiB and a sparse 1 GiB file,
and a body-discarding /upload), an nginx reverse proxy in front of it (1 worker,
keepalive upstream pool) and `club-proxy run` (1 worker) in front of it too.
wrk then measures direct / nginx / club-proxy interleaved, with the order
rotating per round; the median per cell is reported as ratios to nginx. Then:
added p50 latency at 1 connection over direct, peak RSS growth of the proxy
while a 1 GiB upload and a 1 GiB download stream through it, and a py-spy
profile of the proxy under wrk load (self time per function, inclusive time
per function).

Knobs: BENCH_DURATION (seconds per wrk cell, 3), BENCH_ROUNDS (3),
BENCH_PROFILE=0 to skip py-spy.

BENCH_BASELINE=<another checkout of this repository> (e.g. one made with
`git worktree add /tmp/bench-base COMMIT`) adds a before/after pair: the
checkout's own `proxy` package is started as two more targets, "baseline"
(fast lane) and "baseline-aiohttp-path" (`--no-fast-lane`), with this venv's
Python as `python -m proxy run ...`, `PYTHONPATH=<checkout>` and the checkout
as working directory (bench/_baseline.py checks that every `proxy` module it
imports is the checkout's). They are measured in every round with the others
(throughput, latency at 1 connection, CPU per request, and callgrind
instructions per request when valgrind is there), and a second section of
RESULTS.md, "proxy before/after (BASELINE -> CURRENT)", gives current/baseline
per cell: the median of the per-round ratios and their range across rounds
(the noise figure), besides each side's ratio to nginx. Unset, the run is the
same as before.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from bench import _baseline, _instructions
from bench._results import markdown_table, record

ROOT = Path(__file__).resolve().parent.parent
DURATION = int(os.environ.get("BENCH_DURATION", "3"))
LATENCY_DURATION = 3
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
PROFILE = os.environ.get("BENCH_PROFILE", "1") != "0"
SIZES = {"small": "/small", "1MiB": "/big"}
CONNECTIONS = (32, 128)
# "aiohttp-path" is club-proxy with --no-fast-lane: what the fast lane buys.
CURRENT = ("club-proxy", "aiohttp-path")
# The same two from the BENCH_BASELINE checkout, in the same order.
BASELINE = ("baseline", "baseline-aiohttp-path")
CHECKOUT = _baseline.from_environment()
TARGETS = ("direct", "nginx", *CURRENT, *(BASELINE if CHECKOUT else ()))
GIB = 1024**3
K = TypeVar("K")


@dataclass(frozen=True, slots=True)
class Cell:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.1)


# --- servers --------------------------------------------------------------------

NGINX_MAIN = """
worker_processes 1;
{user}
pid {tmp}/{name}.pid;
error_log {tmp}/{name}.error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    client_body_temp_path {tmp}/{name}-body;
    proxy_temp_path {tmp}/{name}-proxy;
    fastcgi_temp_path {tmp}/{name}-fcgi;
    uwsgi_temp_path {tmp}/{name}-uwsgi;
    scgi_temp_path {tmp}/{name}-scgi;
    {body}
}}
"""

UPSTREAM_SERVER = """
    server {{
        listen 127.0.0.1:{port} reuseport;
        root {tmp}/www;
        location = /upload {{ client_max_body_size 0; return 200 "ok\\n"; }}
    }}
"""

PROXY_SERVER = """
    upstream origin {{ server 127.0.0.1:{upstream}; keepalive 256; }}
    server {{
        listen 127.0.0.1:{port} reuseport;
        client_max_body_size 0;
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_request_buffering off;
            proxy_max_temp_file_size 0;
            proxy_buffers 16 64k;
            proxy_buffer_size 64k;
        }}
    }}
"""

ROUTES = """version: 1
upstreams:
  legacy: {{url: "http://127.0.0.1:{upstream}", max_connections: 512, keepalive_timeout: 30s}}
default: legacy
routes:
  - {{id: small, match: "GET /small", to: legacy}}
  - {{id: big, match: "GET /big", to: legacy}}
  - {{id: user-get, match: "GET /api/users/{{id}}", to: legacy}}
  - {{id: events, match: "GET /api/events", to: legacy}}
  - {{id: registration, match: "POST /api/events/{{id}}/registrations", to: legacy}}
"""


def start_nginx(tmp: Path, name: str, body: str) -> subprocess.Popen[bytes]:
    user = "user root;" if os.geteuid() == 0 else ""
    conf = tmp / f"{name}.conf"
    conf.write_text(NGINX_MAIN.format(user=user, tmp=tmp, name=name, body=body))
    return subprocess.Popen(
        ["nginx", "-c", str(conf), "-p", str(tmp), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def make_files(tmp: Path) -> None:
    www = tmp / "www"
    www.mkdir()
    (www / "small").write_bytes(os.urandom(100).hex().encode())  # 200 B
    (www / "big").write_bytes(os.urandom(1024 * 1024))
    # Sparse: 1 GiB of zeros served by nginx without writing 1 GiB to disk.
    with (www / "huge").open("wb") as huge:
        huge.truncate(GIB)


def club_proxy_command(
    tmp: Path,
    port: int,
    *,
    upstream: int,
    extra: tuple[str, ...] = (),
    checkout: _baseline.Checkout | None = None,
) -> list[str]:
    """`club-proxy run ...`, or the same through `python -m proxy` for the baseline checkout."""
    routes = tmp / "routes.yaml"
    routes.write_text(ROUTES.format(upstream=upstream))
    exe = [str(Path(sys.executable).with_name("club-proxy"))]
    cmd = [*(checkout.command() if checkout else exe), "run", "--routes", str(routes)]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    return [*cmd, "--admin-port", "0", "--workers", "1", "--log-level", "WARNING", *extra]


def start_club_proxy(
    tmp: Path, port: int, upstream: int, *extra: str, checkout: _baseline.Checkout | None = None
) -> subprocess.Popen[bytes]:
    # Access log left ON (the default), written to /dev/null: its cost is real.
    return subprocess.Popen(
        club_proxy_command(tmp, port, upstream=upstream, extra=extra, checkout=checkout),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=checkout.env() if checkout else None,
        cwd=checkout.root if checkout else None,
    )


# --- wrk ------------------------------------------------------------------------

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if match is None:
        msg = f"unparsable wrk latency {text!r}"
        raise ValueError(msg)
    return float(match[1]) * _UNITS[match[2]]


def wrk(url: str, connections: int, duration: int = DURATION) -> Cell:
    threads = min(2, connections)
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency", url]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.MULTILINE)[1])  # type: ignore[index]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.MULTILINE)[1])  # type: ignore[index]
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    if socket_errors := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    ):
        errors += sum(int(n) for n in socket_errors.groups())
    return Cell(rps=rps, p50_ms=p50, p99_ms=p99, errors=errors)


def median_cell(cells: list[Cell]) -> Cell:
    return Cell(
        rps=statistics.median(c.rps for c in cells),
        p50_ms=statistics.median(c.p50_ms for c in cells),
        p99_ms=statistics.median(c.p99_ms for c in cells),
        errors=sum(c.errors for c in cells),
    )


def rotated(items: tuple[str, ...], by: int) -> tuple[str, ...]:
    by %= len(items)
    return items[by:] + items[:by]


def throughput(ports: dict[str, int]) -> dict[tuple[str, int, str], list[Cell]]:
    """Every round's cell per (size, connections, target), in round order."""
    runs: dict[tuple[str, int, str], list[Cell]] = collections.defaultdict(list)
    for rnd in range(ROUNDS):
        for size, path in SIZES.items():
            for conns in CONNECTIONS:
                for target in rotated(TARGETS, rnd):
                    cell = wrk(f"http://127.0.0.1:{ports[target]}{path}", conns)
                    runs[size, conns, target].append(cell)
                    print(f"  round {rnd} {size} c={conns} {target}: {cell}", flush=True)
    return runs


def latency_one_connection(ports: dict[str, int]) -> dict[str, list[Cell]]:
    """Every round's cell per target, in round order."""
    runs: dict[str, list[Cell]] = collections.defaultdict(list)
    for rnd in range(ROUNDS):
        for target in rotated(TARGETS, rnd):
            runs[target].append(wrk(f"http://127.0.0.1:{ports[target]}/small", 1, LATENCY_DURATION))
    return runs


def medians(runs: dict[K, list[Cell]]) -> dict[K, Cell]:
    return {key: median_cell(cells) for key, cells in runs.items()}


# --- memory ---------------------------------------------------------------------


def proc_kib(pid: int, field: str) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE)
    return int(match[1]) if match else 0


def peak_growth(pid: int, cmd: list[str]) -> tuple[float, float, float, str]:
    """(RSS before, peak RSS above it (MiB), seconds, curl's summary) for one transfer."""
    baseline = proc_kib(pid, "VmRSS")
    # Writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0).
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    start = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    elapsed = time.monotonic() - start
    return baseline / 1024, (proc_kib(pid, "VmHWM") - baseline) / 1024, elapsed, out.strip()


def memory(pid: int, port: int) -> list[list[str]]:
    fmt = "%{http_code} up=%{size_upload} down=%{size_download}"
    upload = (
        f"head -c {GIB} /dev/zero | curl -sS -o /dev/null -w '{fmt}' "
        f"-X POST -T - http://127.0.0.1:{port}/upload"
    )
    download = ["curl", "-sS", "-o", "/dev/null", "-w", fmt, f"http://127.0.0.1:{port}/huge"]
    rows = []
    for name, cmd in (("1 GiB upload", ["sh", "-c", upload]), ("1 GiB download", download)):
        before, growth, seconds, summary = peak_growth(pid, cmd)
        rate = GIB / seconds / 2**20
        rows.append(
            [
                name,
                f"{before:.1f}",
                f"**{growth:.1f}**",
                f"{seconds:.1f}",
                f"{rate:.0f}",
                f"`{summary}`",
            ]
        )
        print(f"  {name}: +{growth:.1f} MiB peak RSS, {seconds:.1f}s, {summary}", flush=True)
    return rows


# --- CPU per request and where it goes -------------------------------------------


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_per_request(pid: int, url: str, seconds: int = DURATION) -> float:
    """The server's CPU microseconds (user + system) per request under wrk -c32."""
    before = proc_cpu_seconds(pid)
    cmd = ["wrk", "-t2", "-c32", f"-d{seconds}s", url]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    used = proc_cpu_seconds(pid) - before
    requests = int(re.search(r"(\d+) requests in", out)[1])  # type: ignore[index]
    return used / requests * 1e6


def perf_split(pid: int, url: str, seconds: int = 4) -> list[list[str]] | None:
    """Share of the server's CPU samples per binary (kernel, interpreter, C extensions), or None."""
    if shutil.which("perf") is None:
        return None
    data = Path(tempfile.mkdtemp()) / "perf.data"
    cmd = ["perf", "record", "-q", "-e", "cpu-clock", "-F", "999", "-p", str(pid)]
    cmd += ["-o", str(data), "--", "sleep", str(seconds)]
    perf = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    wrk(url, 32, duration=seconds + 1)
    if perf.wait(timeout=60) != 0 or not data.exists():
        return None
    report = ["perf", "report", "-i", str(data), "--sort", "dso", "--stdio"]
    out = subprocess.run(report, capture_output=True, text=True, check=False).stdout
    rows = []
    for line in out.splitlines():
        match = re.match(r"\s+([\d.]+)%\s+(\S+)", line)
        if match and float(match[1]) >= 0.5:
            rows.append([f"`{match[2]}`", f"{match[1]}%"])
    return rows or None


# --- profile --------------------------------------------------------------------


def profile(pid: int, url: str, seconds: int = 5) -> tuple[list[list[str]], list[list[str]], int]:
    spy = Path(sys.executable).with_name("py-spy")
    out = Path(tempfile.mkdtemp()) / "profile.txt"
    cmd = [str(spy), "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "200"]
    # Blocking sampling (the default): --nonblocking over-weights C calls
    # such as socket writes in this setup.
    cmd += ["--format", "raw", "-o", str(out)]
    spy_proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    wrk(url, 32, duration=seconds + 1)
    spy_proc.wait(timeout=60)
    return summarise_profile(out.read_text())


_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:]*)(?::\d+)?\)$")


def _frames(stack: str) -> list[tuple[str, str]]:
    frames = []
    for raw in stack.split(";"):
        match = _FRAME.match(raw)
        func, file = (match["func"], match["file"]) if match else (raw, "?")
        frames.append((func, _short(file)))
    return frames


def _short(file: str) -> str:
    for marker in ("site-packages/", "/lib/python3", str(ROOT) + "/"):
        if marker in file:
            return file.split(marker, 1)[1].lstrip("/").removeprefix("1/")
    return file


def summarise_profile(text: str) -> tuple[list[list[str]], list[list[str]], int]:
    self_time: collections.Counter[str] = collections.Counter()
    per_func: collections.Counter[str] = collections.Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = _frames(stack)
        func, file = frames[-1]
        self_time[f"{func} ({file})"] += count
        for seen in {f"{func} ({file})" for func, file in frames}:
            per_func[seen] += count

    def pct(n: int) -> str:
        return f"{100 * n / total:.1f}%" if total else "-"

    top_self = [[name, pct(n)] for name, n in self_time.most_common(15)]
    # The event loop and server frames sit under every sample; skip that trunk.
    branches = [(name, n) for name, n in per_func.most_common() if n < 0.8 * total]
    top_incl = [[name, pct(n)] for name, n in branches[:20]]
    return top_self, top_incl, total


# --- report ---------------------------------------------------------------------


def ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x" if base else "-"


def throughput_tables(cells: dict[tuple[str, int, str], Cell]) -> str:
    rows, lat_rows = [], []
    for size in SIZES:
        for conns in CONNECTIONS:
            d, n, p, a = (cells[size, conns, t] for t in ("direct", "nginx", *CURRENT))
            rows.append(
                [
                    size,
                    str(conns),
                    f"{d.rps:,.0f}",
                    f"{n.rps:,.0f}",
                    f"{p.rps:,.0f}",
                    f"**{ratio(p.rps, n.rps)}**",
                    f"{a.rps:,.0f}",
                    ratio(a.rps, n.rps),
                    f"{d.errors}/{n.errors}/{p.errors}/{a.errors}",
                ]
            )
            lat_rows.append(
                [
                    size,
                    str(conns),
                    f"{d.p50_ms:.2f} / {d.p99_ms:.2f}",
                    f"{n.p50_ms:.2f} / {n.p99_ms:.2f}",
                    f"{p.p50_ms:.2f} / {p.p99_ms:.2f}",
                    ratio(p.p50_ms, n.p50_ms),
                    ratio(p.p99_ms, n.p99_ms),
                ]
            )
    head = [
        "response",
        "conns",
        "direct req/s",
        "nginx req/s",
        "club-proxy req/s",
        "club-proxy / nginx",
        "aiohttp path req/s",
        "aiohttp path / nginx",
        "errors (direct/nginx/club-proxy/aiohttp path)",
    ]
    lat_head = [
        "response",
        "conns",
        "direct p50/p99 ms",
        "nginx p50/p99 ms",
        "club-proxy p50/p99 ms",
        "p50 vs nginx",
        "p99 vs nginx",
    ]
    return markdown_table(head, rows) + "\n\n" + markdown_table(lat_head, lat_rows)


def skip_reason() -> str | None:
    """Why the bench cannot run here, or None."""
    missing = [tool for tool in ("nginx", "wrk", "curl") if shutil.which(tool) is None]
    if missing:
        return f"missing {', '.join(missing)} (apt-get install -y nginx wrk curl)"
    if not Path(sys.executable).with_name("club-proxy").exists():
        return ".venv/bin/club-proxy missing (pip install -e .)"
    return None


def main() -> None:
    spy = Path(sys.executable).with_name("py-spy")
    if reason := skip_reason():
        print(f"bench_proxy: SKIPPED, {reason}")
        return
    commits = baseline_commits()
    with (
        tempfile.TemporaryDirectory(prefix="bench-proxy-") as tmp_name,
        contextlib.ExitStack() as stack,
    ):
        tmp = Path(tmp_name)
        tmp.chmod(0o755)  # nginx workers may run as another user
        make_files(tmp)
        ports = {t: free_port() for t in TARGETS}
        procs = start_servers(tmp, ports)
        for proc in procs.values():
            stack.callback(_stop, proc)
        for target in TARGETS:
            wait_http(f"http://127.0.0.1:{ports[target]}/small")
        club = procs["club-proxy"].pid
        if CHECKOUT is not None:
            CHECKOUT.verify_running(procs["baseline"].pid)
            CHECKOUT.verify_running(procs["baseline-aiohttp-path"].pid)
        for target in TARGETS:  # warm-up: pools, caches, JIT-free but allocator-warm
            wrk(f"http://127.0.0.1:{ports[target]}/small", 32, duration=1)
        print(f"throughput: {ROUNDS} rounds x {DURATION}s per cell", flush=True)
        cell_runs = throughput(ports)
        print("latency at 1 connection", flush=True)
        one_runs = latency_one_connection(ports)
        print("memory while streaming 1 GiB", flush=True)
        mem_rows = memory(club, ports["club-proxy"])
        print("CPU per request", flush=True)
        cpu_runs = cpu_rounds({t: procs[t].pid for t in TARGETS[2:]}, ports)
        cpu = {target: statistics.median(values) for target, values in cpu_runs.items()}
        split = perf_split(club, f"http://127.0.0.1:{ports['club-proxy']}/small")
        instructions = None
        if _instructions.available():
            print("instructions per request (callgrind)", flush=True)
            instructions = instruction_counts(tmp, ports["direct"])
        prof = None
        if PROFILE and spy.exists():
            print("profile (py-spy)", flush=True)
            prof = (
                profile(club, f"http://127.0.0.1:{ports['club-proxy']}/small"),
                profile(club, f"http://127.0.0.1:{ports['club-proxy']}/big"),
            )
    cells, one = medians(cell_runs), medians(one_runs)
    record(
        "proxy",
        report(
            cells,
            one,
            mem_rows,
            prof,
            spy_available=spy.exists(),
            cpu=cpu,
            split=split,
            instructions=instructions,
        ),
    )
    if commits is not None:
        if _baseline.proxy_changed_since(ROOT, commits[1]):
            print(f"WARNING: {ROOT}/proxy differs from {commits[1]} now", flush=True)
        record(
            f"proxy before/after ({commits[0]} -> {commits[1]})",
            before_after(cell_runs, one_runs, cpu_runs, instructions, commits),
        )


def baseline_commits() -> tuple[str, str] | None:
    """(baseline, current) commits after checking the baseline's imports; None without one."""
    if CHECKOUT is None:
        return None
    CHECKOUT.verify()
    commits = (CHECKOUT.commit(), _baseline.commit_of(ROOT))
    print(f"before/after: baseline {commits[0]} ({CHECKOUT.root}), current {commits[1]}")
    return commits


def start_servers(tmp: Path, ports: dict[str, int]) -> dict[str, subprocess.Popen[bytes]]:
    """Every target's server: the upstream ("direct"), the nginx proxy, the club-proxy ones."""
    procs = {
        "direct": start_nginx(
            tmp, "upstream", UPSTREAM_SERVER.format(port=ports["direct"], tmp=tmp)
        ),
        "nginx": start_nginx(
            tmp, "proxy", PROXY_SERVER.format(port=ports["nginx"], upstream=ports["direct"])
        ),
    }
    for target, extra, checkout in club_servers():
        procs[target] = start_club_proxy(
            tmp, ports[target], ports["direct"], *extra, checkout=checkout
        )
    return procs


def club_servers() -> list[tuple[str, tuple[str, ...], _baseline.Checkout | None]]:
    """(target, extra arguments, checkout or None for this one) per club-proxy server."""
    lanes: tuple[tuple[str, ...], ...] = ((), ("--no-fast-lane",))
    servers: list[tuple[str, tuple[str, ...], _baseline.Checkout | None]] = [
        (target, extra, None) for target, extra in zip(CURRENT, lanes, strict=True)
    ]
    if CHECKOUT is not None:
        servers += [
            (target, extra, CHECKOUT) for target, extra in zip(BASELINE, lanes, strict=True)
        ]
    return servers


def cpu_rounds(pids: dict[str, int], ports: dict[str, int]) -> dict[str, list[float]]:
    """CPU us per request of each club-proxy server, one sample per round, targets interleaved."""
    runs: dict[str, list[float]] = collections.defaultdict(list)
    for _ in range(ROUNDS):
        for target, pid in pids.items():
            runs[target].append(cpu_per_request(pid, f"http://127.0.0.1:{ports[target]}/small"))
            print(f"  {target}: {runs[target][-1]:.1f} us per request", flush=True)
    return runs


def instruction_counts(tmp: Path, upstream: int) -> dict[str, float]:
    """Callgrind instructions per 200 B request for each club-proxy target (baseline's too)."""
    counts = {}
    for target, extra, checkout in club_servers():
        command = functools.partial(
            club_proxy_command, tmp, upstream=upstream, extra=extra, checkout=checkout
        )
        # _instructions starts valgrind without env/cwd: the baseline's are set around it.
        with checkout.inherited() if checkout else contextlib.nullcontext():
            counts[target] = _instructions.instructions_per_request(command, "/small", tmp)
        print(f"  {target}: {counts[target]:,.0f} instructions per request", flush=True)
    return counts


def report(
    cells: dict[tuple[str, int, str], Cell],
    one: dict[str, Cell],
    mem_rows: list[list[str]],
    prof: tuple[tuple[list[list[str]], list[list[str]], int], ...] | None,
    *,
    spy_available: bool,
    cpu: dict[str, float],
    split: list[list[str]] | None,
    instructions: dict[str, float] | None,
) -> str:
    d, n, p, a = (one[t] for t in ("direct", "nginx", *CURRENT))
    parts = [
        (
            f"wrk on loopback, 2 threads, {ROUNDS} interleaved rounds of {DURATION} s per cell (order rotating), median. "
            "Upstream: nginx 1 worker serving static files (200 B body, 1 MiB body). "
            "nginx proxy: 1 worker, `keepalive 256` upstream pool, HTTP/1.1 upstream, no disk buffering. "
            "club-proxy: `club-proxy run --workers 1` (uvloop), 5 routes, access log on (to /dev/null), metrics on. "
            "aiohttp path: the same with `--no-fast-lane` (every request through aiohttp's web layer). "
            f"All {len(TARGETS)} servers and wrk share the machine's cores"
            + (" (two of them the baseline's, see the before/after section)." if CHECKOUT else ".")
        ),
        "### Throughput (goal: >= 0.5x nginx small, >= 0.8x nginx 1 MiB)",
        throughput_tables(cells),
        "### Added latency at 1 connection (200 B, goal: <= 0.3 ms over direct)",
        markdown_table(
            ["path", "p50 ms", "p99 ms", "added p50 over direct"],
            [
                ["direct", f"{d.p50_ms:.3f}", f"{d.p99_ms:.3f}", "-"],
                ["nginx", f"{n.p50_ms:.3f}", f"{n.p99_ms:.3f}", f"{n.p50_ms - d.p50_ms:+.3f} ms"],
                [
                    "club-proxy",
                    f"{p.p50_ms:.3f}",
                    f"{p.p99_ms:.3f}",
                    f"**{p.p50_ms - d.p50_ms:+.3f} ms**",
                ],
                [
                    "aiohttp path",
                    f"{a.p50_ms:.3f}",
                    f"{a.p99_ms:.3f}",
                    f"{a.p50_ms - d.p50_ms:+.3f} ms",
                ],
            ],
        ),
        "### Peak RSS growth of the club-proxy process (goal: <= 32 MiB)",
        (
            "VmHWM after the transfer minus VmRSS before it (VmHWM reset through /proc/PID/clear_refs). "
            "curl streams from /dev/zero and to /dev/null; the upstream discards the upload and serves a sparse file."
        ),
        markdown_table(
            ["transfer", "RSS before MiB", "peak growth MiB", "seconds", "MiB/s", "curl"], mem_rows
        ),
    ]
    parts.append("### CPU per proxied 200 B request (wrk -c32, /proc utime+stime, median)")
    parts.append(_against_aiohttp_path("CPU us per request", cpu, "{:.0f}"))
    if instructions is not None:
        parts.append(
            "### CPU instructions per proxied 200 B request "
            "(valgrind callgrind, user space, sequential keep-alive requests)"
        )
        parts.append(_against_aiohttp_path("instructions per request", instructions, "{:,.0f}"))
    if split is not None:
        parts.append("### Where club-proxy's CPU goes, 200 B (perf record -e cpu-clock, by binary)")
        parts.append(markdown_table(["binary", "share of samples"], split))
    if prof is None:
        parts.append(
            "_Profile skipped (BENCH_PROFILE=0 or py-spy missing: pip install py-spy)._"
            if not spy_available
            else "_Profile skipped (BENCH_PROFILE=0)._"
        )
    else:
        for label, (top_self, top_incl, total) in zip(("200 B", "1 MiB"), prof, strict=True):
            parts.append(
                f"### Profile under wrk -c32, {label} responses (py-spy, {total} samples, idle excluded)"
            )
            parts.append(markdown_table(["self time: function (file)", "share"], top_self))
            parts.append(
                markdown_table(
                    ["inclusive, below the event-loop trunk: function (file)", "share"], top_incl
                )
            )
    parts.append(NOTES)
    return "\n\n".join(parts)


def paired(current: list[float], baseline: list[float]) -> str:
    """Median of the per-round ratios current/baseline, with their range over the rounds."""
    ratios = [c / b for c, b in zip(current, baseline, strict=True) if b]
    if not ratios:
        return "-"
    return f"**{statistics.median(ratios):.3f}x** ({min(ratios):.2f}-{max(ratios):.2f})"


def spread(values: list[float]) -> str:
    """Round-to-round spread of one side: (max - min) / median."""
    mid = statistics.median(values)
    return f"{(max(values) - min(values)) / mid:.0%}" if mid else "-"


def before_after(
    cell_runs: dict[tuple[str, int, str], list[Cell]],
    one_runs: dict[str, list[Cell]],
    cpu_runs: dict[str, list[float]],
    instructions: dict[str, float] | None,
    commits: tuple[str, str],
) -> str:
    """The BENCH_BASELINE section: current / baseline per cell, from the same interleaved rounds."""
    assert CHECKOUT is not None
    pairs = (
        ("fast lane", *CURRENT[:1], *BASELINE[:1]),
        ("aiohttp path", *CURRENT[1:], *BASELINE[1:]),
    )
    cells = medians(cell_runs)
    rows = []
    for size in SIZES:
        for conns in CONNECTIONS:
            nginx = cells[size, conns, "nginx"].rps
            for label, cur, base in pairs:
                cur_rps = [c.rps for c in cell_runs[size, conns, cur]]
                base_rps = [c.rps for c in cell_runs[size, conns, base]]
                rows.append(
                    [
                        size,
                        str(conns),
                        label,
                        f"{cells[size, conns, base].rps:,.0f}",
                        f"{cells[size, conns, cur].rps:,.0f}",
                        paired(cur_rps, base_rps),
                        f"{spread(base_rps)} / {spread(cur_rps)}",
                        ratio(cells[size, conns, base].rps, nginx),
                        ratio(cells[size, conns, cur].rps, nginx),
                        f"{cells[size, conns, base].errors}/{cells[size, conns, cur].errors}",
                    ]
                )
    one = medians(one_runs)
    lat_rows = [
        [
            label,
            f"{one[base].p50_ms:.3f}",
            f"{one[cur].p50_ms:.3f}",
            paired([c.p50_ms for c in one_runs[cur]], [c.p50_ms for c in one_runs[base]]),
            f"{one[base].p99_ms:.3f} / {one[cur].p99_ms:.3f}",
        ]
        for label, cur, base in pairs
    ]
    cpu_rows = [
        [
            label,
            f"{statistics.median(cpu_runs[base]):.1f}",
            f"{statistics.median(cpu_runs[cur]):.1f}",
            paired(cpu_runs[cur], cpu_runs[base]),
        ]
        for label, cur, base in pairs
    ]
    parts = [
        (
            f"Baseline: `{CHECKOUT.root}` at {commits[0]}, started as `python -m proxy run ...` "
            f"with `PYTHONPATH` and the working directory set to the checkout (every `proxy` module "
            f"it imports is the checkout's, checked before the run). Current: `{ROOT}` at "
            f"{commits[1]}, `club-proxy run ...`. Same venv, flags, routes and upstream, measured "
            f"in the same run as the proxy section: {ROUNDS} rounds of {DURATION} s per cell, all "
            f"{len(TARGETS)} targets in every round, order rotating per round. current / baseline "
            "is the median of the per-round ratios (both sides measured within the same round, "
            "seconds apart), in brackets their lowest and highest over the rounds; spread is "
            "(max - min) / median of one side's req/s over the rounds. Both are the noise figure."
        ),
        "### Throughput, current vs baseline",
        markdown_table(
            [
                "response",
                "conns",
                "path",
                "baseline req/s",
                "current req/s",
                "current / baseline (range)",
                "spread baseline / current",
                "baseline / nginx",
                "current / nginx",
                "errors baseline/current",
            ],
            rows,
        ),
        "### Latency at 1 connection, 200 B",
        markdown_table(
            [
                "path",
                "baseline p50 ms",
                "current p50 ms",
                "current / baseline (range)",
                "p99 ms baseline / current",
            ],
            lat_rows,
        ),
        "### CPU per proxied 200 B request (wrk -c32, /proc utime+stime, median, interleaved)",
        markdown_table(
            ["path", "baseline us", "current us", "current / baseline (range)"], cpu_rows
        ),
    ]
    if instructions is not None:
        parts.append(
            "### CPU instructions per proxied 200 B request (valgrind callgrind, user space)"
        )
        parts.append(
            markdown_table(
                ["path", "baseline", "current", "current / baseline", "difference"],
                [
                    [
                        label,
                        f"{instructions[base]:,.0f}",
                        f"{instructions[cur]:,.0f}",
                        f"**{instructions[cur] / instructions[base]:.3f}x**",
                        f"{instructions[cur] - instructions[base]:+,.0f}",
                    ]
                    for label, cur, base in pairs
                ],
            )
        )
    return "\n\n".join(parts)


def _against_aiohttp_path(what: str, values: dict[str, float], fmt: str) -> str:
    """A two-row table: the fast lane and `--no-fast-lane`, with their ratio."""
    lane, classic = values["club-proxy"], values["aiohttp-path"]
    return markdown_table(
        ["server", what, "vs aiohttp path"],
        [
            ["club-proxy (fast lane)", f"**{fmt.format(lane)}**", ratio(lane, classic)],
            ["club-proxy --no-fast-lane", fmt.format(classic), "1.00x"],
        ],
    )


NOTES = """### Reading it

- Errors are wrk's: non-2xx answers plus socket errors (mostly its 2 s timeout at 128 connections).
- club-proxy serves every client connection in the fast lane (`proxy/fastlane/lane.py`,
  `proxy/fastlane/call.py`; docs/proxy.md, "The fast lane"): bodiless keep-alive requests to
  an HTTP upstream are parsed with aiohttp's C parser and relayed below aiohttp's web
  layer, and a small answer is relayed inside two callbacks (no task) on an idle pooled
  connection. The aiohttp-path column is the same binary with `--no-fast-lane`: the
  previous request path (thin keep-alive client on aiohttp's `ResponseHandler`, raw
  header bytes, batched access log, `gc.freeze()`), which gave 0.22-0.31x nginx on 200 B
  and 0.70-0.82x on 1 MiB in earlier runs.
- Where the time goes now, 200 B: `perf` (table above) splits the process's CPU into
  the kernel (the two loopback sends, each of which also runs the receiver's TCP work
  and wakes nginx or wrk on the same two cores, and the two receives), the Python
  interpreter, and the C extensions (llhttp, uvloop, multidict). The interpreter's half is
  spread over about 50 Python functions and 110 calls per request (cProfile count):
  aiohttp's request parser (a header multidict, a yarl URL), the route match, the
  upstream head, the plain-answer check (`proxy/fastlane/plainanswer.py`: a plain answer skips
  aiohttp's response parser, multidict and StreamReader), the pool and its timer,
  metrics and the access line; no single function is more than a few per cent. py-spy's
  blocking sampling attributes the kernel time to the Python frame that made the syscall,
  so its tables over-weight `FastLane.write` and `Exchange.send`.
- Instructions per request (callgrind) are the steady figure for A/B work on this
  machine: the same count comes back run after run, where req/s and CPU time swing by a
  third between identical runs.
- The ratio to nginx depends on the machine more than the run-to-run noise suggests:
  the same code (about 180k instructions per request) gave 0.29-0.51x nginx on 200 B on
  one 2-core VM and 0.62-0.73x on another (why is not pinned down; the interpreter's
  share of the work is the likely suspect). Compare ratios from the same machine only, and
  the instruction count across machines. On the slower machine a bare callback-only
  relay (aiohttp's parsers, no routing, header rules, metrics or log; a throwaway
  experiment, not part of this run) reached about 0.7x nginx, and the same with one task
  per request about 0.55x. Throughput scales with `--workers N` (SO_REUSEPORT), one per
  core.
- 1 MiB responses: socket writes and reads of the body dominate; the fast lane writes
  each body piece straight to the client transport with its flow control, 64 KiB read
  buffers.
- Added latency at 1 connection is mostly scheduling: the proxy's two sends each wake a
  peer process on the same two cores.
"""


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    main()
