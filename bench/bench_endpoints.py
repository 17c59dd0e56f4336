"""Per endpoint, through the proxy: the legacy route vs the new route, one run.

Two club-proxy processes on the same seeded database and Redis: one whose
routes.yaml sends every endpoint to the legacy club-api (a third process, one
HTTP hop behind the proxy), one that sends every endpoint to new_services
in-process. `wrk` (or, without it, nothing: the bench says so) drives each
endpoint on each proxy in short alternating runs, several rounds; the table
shows medians of req/s and p50/p99 latency and the new/legacy throughput ratio.

Goal (issue 5): every new route at least as fast as its legacy twin.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

from bench._results import markdown_table, record
from examples.club_api.app import CONFIG_DIR
from examples.devservices import start_services
from examples.stack import ChildProcess, _free_port, prepare_database, start_child

ROUNDS = 3
DURATION = "2s"
CONNECTIONS = 16
AUTH = "Authorization: Bearer seed-token-1"
# (name, method, path, body): GETs, an authenticated write that answers 409 every
# time after the first (auth + row lock + checks), and a direct message.
ENDPOINTS: list[tuple[str, str, str, str | None]] = [
    ("GET /api/users/{id}", "GET", "/api/users/42", None),
    ("GET /api/users", "GET", "/api/users?active=true&limit=20&offset=100", None),
    ("GET /api/events", "GET", "/api/events?limit=20", None),
    ("GET /api/events/{id} (cached)", "GET", "/api/events/3", None),
    ("GET /api/stats", "GET", "/api/stats", None),
    ("POST .../registrations (409)", "POST", "/api/events/1/registrations", ""),
    ("POST /api/users/{id}/messages", "POST", "/api/users/2/messages", '{"text": "hi"}'),
]
PATHS = [
    ("/health", "GET"),
    ("/api/stats", "GET"),
    ("/api/users", "GET"),
    ("/api/users/{id}", "GET"),
    ("/api/users/{id}/messages", "POST"),
    ("/api/events", "GET"),
    ("/api/events/{id}", "GET"),
    ("/api/events/{id}/registrations", "POST"),
    ("/api/events/{id}/registrations/me", "DELETE"),
    ("/ws", "GET"),
]


def routes_text(legacy_url: str, to: str) -> str:
    lines = [
        "version: 1",
        f'upstreams: {{legacy: {{url: "{legacy_url}", max_connections: 100}}}}',
        f'new: {{app: "new_services.app:create_app", config_dir: "{CONFIG_DIR}"}}',
        "default: legacy",
        "routes:",
    ]
    lines += [
        f'  - {{id: r{i}, match: "{method} {path}", to: {to}}}'
        for i, (path, method) in enumerate(PATHS)
    ]
    return "\n".join(lines) + "\n"


async def start_proxy(name: str, routes: Path, env: dict[str, str]) -> ChildProcess:
    port, admin = _free_port(), _free_port()
    args = ["-m", "proxy", "run", "--routes", str(routes), "--port", str(port)]
    args += ["--admin-port", str(admin), "--log-level", "WARNING"]
    return await start_child(
        name,
        args,
        env=env,
        url=f"http://127.0.0.1:{port}",
        ready_url=f"http://127.0.0.1:{admin}/-/ready",
    )


def wrk(url: str, method: str, body: str | None, script_dir: Path) -> tuple[float, float, float]:
    """(req/s, p50 ms, p99 ms) of one wrk run."""
    args = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{DURATION}", "--latency", "-H", AUTH]
    if method != "GET":
        script = script_dir / f"{method}-{abs(hash(body))}.lua"
        lua_body = (body or "").replace("\\", "\\\\").replace('"', '\\"')
        script.write_text(
            f'wrk.method = "{method}"\nwrk.body = "{lua_body}"\n'
            'wrk.headers["Content-Type"] = "application/json"\n',
            encoding="utf-8",
        )
        args += ["-s", str(script)]
    out = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]
    return rps, _latency(out, "50%"), _latency(out, "99%")


def _latency(out: str, pct: str) -> float:
    value, unit = re.search(rf"{pct}\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


async def _prime(base: str) -> None:
    """Register user 1 for event 1 once (later POSTs answer 409) and warm both sides."""
    import aiohttp  # noqa: PLC0415

    async with aiohttp.ClientSession(headers={"Authorization": "Bearer seed-token-1"}) as s:
        async with s.post(f"{base}/api/events/1/registrations") as resp:
            await resp.read()
        for _, method, path, body in ENDPOINTS:
            for _ in range(20):
                async with s.request(method, base + path, data=body) as resp:
                    await resp.read()


async def run() -> str:
    services = start_services(
        pg_dsn=os.environ.get("CLUB_PG_DSN") or None,
        redis_url=os.environ.get("CLUB_REDIS_URL") or None,
    )
    children: list[ChildProcess] = []
    try:
        dsn = await prepare_database(services.pg_dsn, services.redis_url)
        env = {
            **os.environ,
            "CLUB_PG__CLUB__DSN": dsn,
            "CLUB_SETTINGS__REDIS_URL": services.redis_url,
        }
        port = _free_port()
        club = await start_child(
            "club-api",
            ["-m", "examples.club_api", "--port", str(port)],
            env=env,
            url=f"http://127.0.0.1:{port}",
            ready_url=f"http://127.0.0.1:{port}/health",
        )
        children.append(club)
        with tempfile.TemporaryDirectory(prefix="bench-endpoints-") as tmp:
            root = Path(tmp)
            proxies = {}
            for side in ("legacy", "new"):
                routes_path = root / f"{side}.yaml"
                routes_path.write_text(routes_text(club.url, side), encoding="utf-8")
                proxies[side] = await start_proxy(f"proxy-{side}", routes_path, env)
                children.append(proxies[side])
            await _prime(proxies["legacy"].url)
            await _prime(proxies["new"].url)
            results: dict[tuple[str, str], list[tuple[float, float, float]]] = {
                (name, side): [] for name, *_ in ENDPOINTS for side in proxies
            }
            for round_no in range(ROUNDS):
                order = ["legacy", "new"] if round_no % 2 == 0 else ["new", "legacy"]
                for name, method, path, body in ENDPOINTS:
                    for side in order:
                        url = proxies[side].url + path
                        results[(name, side)].append(wrk(url, method, body, root))
    finally:
        for child in reversed(children):
            await child.stop()
        services.close()
    return _table(results)


def _table(results: dict[tuple[str, str], list[tuple[float, float, float]]]) -> str:
    rows = []
    for name, *_ in ENDPOINTS:
        legacy = [statistics.median(col) for col in zip(*results[(name, "legacy")], strict=True)]
        new = [statistics.median(col) for col in zip(*results[(name, "new")], strict=True)]
        rows.append(
            [
                name,
                f"{legacy[0]:.0f}",
                f"{new[0]:.0f}",
                f"**{new[0] / legacy[0]:.2f}x**",
                f"{legacy[1]:.1f} / {legacy[2]:.1f}",
                f"{new[1]:.1f} / {new[2]:.1f}",
            ]
        )
    header = [
        "endpoint",
        "legacy req/s",
        "new req/s",
        "new / legacy",
        "legacy p50 / p99 ms",
        "new p50 / p99 ms",
    ]
    intro = (
        f"Through club-proxy, seeded database (scale 0.1), wrk -t1 -c{CONNECTIONS} -d{DURATION}, "
        f"{ROUNDS} interleaved rounds, medians. Legacy route: proxy -> club-api over HTTP "
        "(2 processes); new route: proxy with new_services in-process (1 process). "
        "2 shared cores, so the load generator competes with the servers.\n\n"
    )
    gaps = (
        "\n\nWhere gaps come from (reasoned from the code paths, not profiled): the new "
        "side skips the proxy->club-api hop, which shows on the cache hit and on stats (one "
        "raw query); single-row reads swing between runs on this shared machine (1.40x and "
        "0.74x for GET /api/users/{id} in two runs). It loses where Tortoise adds per-query Python work that PgBank's raw SQL "
        "does not: building the SQL through pypika on every call, and converting "
        "`.values()` rows field by field (lists: 20 rows x jsonb + 2 timestamps, plus the "
        "count query; the registration check runs 5 ORM queries inside a transaction). "
        "Direct messages also pay a Redis round trip (the hub's XADD+PUBLISH script) "
        "that the in-memory legacy path does not: the price of cross-instance delivery "
        "and resume."
    )
    return intro + markdown_table(header, rows) + gaps


def main() -> None:
    if shutil.which("wrk") is None:
        print("bench_endpoints: wrk is not installed; nothing measured")
        return
    table = asyncio.run(run())
    print(table)
    record("endpoints", table)


if __name__ == "__main__":
    main()
