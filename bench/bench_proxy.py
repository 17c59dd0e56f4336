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
"""

from __future__ import annotations

import collections
import contextlib
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

from bench._results import markdown_table, record

ROOT = Path(__file__).resolve().parent.parent
DURATION = int(os.environ.get("BENCH_DURATION", "3"))
LATENCY_DURATION = 3
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
PROFILE = os.environ.get("BENCH_PROFILE", "1") != "0"
SIZES = {"small": "/small", "1MiB": "/big"}
CONNECTIONS = (32, 128)
TARGETS = ("direct", "nginx", "club-proxy")
GIB = 1024**3


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


def start_club_proxy(tmp: Path, port: int, upstream: int) -> subprocess.Popen[bytes]:
    routes = tmp / "routes.yaml"
    routes.write_text(ROUTES.format(upstream=upstream))
    exe = Path(sys.executable).with_name("club-proxy")
    cmd = [str(exe), "run", "--routes", str(routes), "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--admin-port", "0", "--workers", "1", "--log-level", "WARNING"]
    # Access log left ON (the default), written to /dev/null: its cost is real.
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


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


def throughput(ports: dict[str, int]) -> dict[tuple[str, int, str], Cell]:
    runs: dict[tuple[str, int, str], list[Cell]] = collections.defaultdict(list)
    for rnd in range(ROUNDS):
        for size, path in SIZES.items():
            for conns in CONNECTIONS:
                for target in rotated(TARGETS, rnd):
                    cell = wrk(f"http://127.0.0.1:{ports[target]}{path}", conns)
                    runs[size, conns, target].append(cell)
                    print(f"  round {rnd} {size} c={conns} {target}: {cell}", flush=True)
    return {key: median_cell(cells) for key, cells in runs.items()}


def latency_one_connection(ports: dict[str, int]) -> dict[str, Cell]:
    runs: dict[str, list[Cell]] = collections.defaultdict(list)
    for rnd in range(ROUNDS):
        for target in rotated(TARGETS, rnd):
            runs[target].append(wrk(f"http://127.0.0.1:{ports[target]}/small", 1, LATENCY_DURATION))
    return {target: median_cell(cells) for target, cells in runs.items()}


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
            d, n, p = (cells[size, conns, t] for t in TARGETS)
            rows.append(
                [
                    size,
                    str(conns),
                    f"{d.rps:,.0f}",
                    f"{n.rps:,.0f}",
                    f"{p.rps:,.0f}",
                    f"**{ratio(p.rps, n.rps)}**",
                    f"{d.errors}/{n.errors}/{p.errors}",
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
        "errors (direct/nginx/club-proxy)",
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


def main() -> None:
    missing = [tool for tool in ("nginx", "wrk", "curl") if shutil.which(tool) is None]
    spy = Path(sys.executable).with_name("py-spy")
    if missing:
        print(
            f"bench_proxy: SKIPPED, missing {', '.join(missing)} (apt-get install -y nginx wrk curl)"
        )
        return
    if not Path(sys.executable).with_name("club-proxy").exists():
        print("bench_proxy: SKIPPED, .venv/bin/club-proxy missing (pip install -e .)")
        return
    with (
        tempfile.TemporaryDirectory(prefix="bench-proxy-") as tmp_name,
        contextlib.ExitStack() as stack,
    ):
        tmp = Path(tmp_name)
        tmp.chmod(0o755)  # nginx workers may run as another user
        make_files(tmp)
        ports = {t: free_port() for t in TARGETS}
        procs = [
            start_nginx(tmp, "upstream", UPSTREAM_SERVER.format(port=ports["direct"], tmp=tmp)),
            start_nginx(
                tmp, "proxy", PROXY_SERVER.format(port=ports["nginx"], upstream=ports["direct"])
            ),
            start_club_proxy(tmp, ports["club-proxy"], ports["direct"]),
        ]
        for proc in procs:
            stack.callback(_stop, proc)
        for target in TARGETS:
            wait_http(f"http://127.0.0.1:{ports[target]}/small")
        club = procs[2].pid
        for target in TARGETS:  # warm-up: pools, caches, JIT-free but allocator-warm
            wrk(f"http://127.0.0.1:{ports[target]}/small", 32, duration=1)
        print(f"throughput: {ROUNDS} rounds x {DURATION}s per cell", flush=True)
        cells = throughput(ports)
        print("latency at 1 connection", flush=True)
        one = latency_one_connection(ports)
        print("memory while streaming 1 GiB", flush=True)
        mem_rows = memory(club, ports["club-proxy"])
        prof = None
        if PROFILE and spy.exists():
            print("profile (py-spy)", flush=True)
            prof = (
                profile(club, f"http://127.0.0.1:{ports['club-proxy']}/small"),
                profile(club, f"http://127.0.0.1:{ports['club-proxy']}/big"),
            )
    record("proxy", report(cells, one, mem_rows, prof, spy_available=spy.exists()))


def report(
    cells: dict[tuple[str, int, str], Cell],
    one: dict[str, Cell],
    mem_rows: list[list[str]],
    prof: tuple[tuple[list[list[str]], list[list[str]], int], ...] | None,
    *,
    spy_available: bool,
) -> str:
    d, n, p = (one[t] for t in TARGETS)
    parts = [
        (
            f"wrk on loopback, 2 threads, {ROUNDS} interleaved rounds of {DURATION} s per cell (order rotating), median. "
            "Upstream: nginx 1 worker serving static files (200 B body, 1 MiB body). "
            "nginx proxy: 1 worker, `keepalive 256` upstream pool, HTTP/1.1 upstream, no disk buffering. "
            "club-proxy: `club-proxy run --workers 1` (uvloop), 5 routes, access log on (to /dev/null), metrics on. "
            "All three processes and wrk share the machine's cores."
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


NOTES = """### Reading it

- Errors are wrk's: non-2xx answers plus socket errors (mostly its 2 s timeout at 128 connections).
- The request path since the proxy-perf work (see docs/proxy.md, "Performance notes"):
  plain requests go through a thin keep-alive client (`proxy/_upstream_client.py`, on
  aiohttp's own `ResponseHandler` and llhttp parser) instead of `ClientSession`; the
  upstream request head is built once as bytes from the client's raw headers and sent
  in one write; request ids are a per-process prefix plus a counter (no getrandom);
  the access log is batched JSON lines on stdout (no stdlib logging per request);
  `gc.freeze()` after startup. Before it, the same benchmark gave 0.10-0.13x nginx on
  200 B and 0.57-0.65x on 1 MiB, +0.38 ms at 1 connection.
- Where the time goes now, 200 B: the two socket sends per request dominate the
  profile (`Exchange.send`: the request to the upstream; `StreamWriter._writelines`:
  the answer to the client; on loopback each send also runs the receiver's TCP work and
  wakes nginx or wrk, which share the two cores), then the event loop itself
  (`Runner.run`: epoll and receives); aiohttp's server machinery (request parsing,
  `StreamResponse` prepare and write) and our own code (match, headers, metrics, access
  log) are each a few per cent. CPU per proxied request is about 105-140 us at 32
  connections (measured from /proc utime+stime), of which the user part is about
  100 us.
- Small responses: a bare aiohttp+uvloop hello-world server (200 B body, no access log)
  measured about 27.7k req/s with wrk -c32 on a quiet machine (a one-off measurement, not
  part of this run; an earlier 14-15k figure was taken under load), near this nginx
  proxy. A proxy does a server and a client HTTP exchange per request in one Python
  process, so about 0.4x nginx is the practical ceiling for one aiohttp worker; the rest
  of the gap is per-request work in aiohttp's server and our path. Throughput scales
  with `--workers N` (SO_REUSEPORT), one per core; the ratio per core stays as above.
- 1 MiB responses: socket writes and reads of the body dominate (`StreamWriter._write`,
  `ResponseHandler.data_received`, which includes llhttp copying each body piece);
  64 KiB read buffers measured better than 256 KiB here (fewer cache misses, same
  syscalls).
- Added latency at 1 connection is mostly scheduling: the proxy's two sends each wake a
  peer process on the same two cores; user CPU per request is about 180 us at 1
  connection against 100 us at 32 (cold caches between requests).
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
