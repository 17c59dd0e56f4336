"""A shadow copy's HTTP request: aiohttp's `ClientSession` against the thin keep-alive pool.

`proxy.shadow.candidate.CandidateClients.fetch` sends each copy to a TCP side
through the proxy's own HTTP/1.1 client (`proxy.upstream.client.ConnectionPool`);
it used aiohttp's `ClientSession` before. This measures the CPU one fetch
costs the proxy process either way: `time.process_time()` of this process
(the client) per fetch of a 2.2 KiB JSON answer (bench/_sides.py `same`, in
a process of its own, so its CPU is not counted), done one at a time and by
16 concurrent workers (the shadow runtime's default worker count, each
fetching in turn as a worker does). The old path is the session code as it
was (`SessionClients` below, copied from candidate.py before the change).
Rounds interleave the four cells in a rotating order; the median and range
over rounds are reported, with the new/old ratio taken within each round.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from time import perf_counter
from typing import TYPE_CHECKING, Final

import aiohttp
import uvloop
from yarl import URL

from bench._results import markdown_table, record
from bench._sides import BODY
from bench.bench_proxy import free_port, wait_http
from proxy.shadow.candidate import CandidateClients
from proxy.shadow.model import Answer

if TYPE_CHECKING:
    from collections.abc import Mapping

ROOT: Final = Path(__file__).resolve().parent.parent
ROUNDS: Final = 15
FETCHES: Final = {1: 3_000, 16: 4_000}  # per cell, by concurrency
MAX_BODY: Final = 1 << 20
# A copy's headers as the runtime builds them (what an upstream would get, plus the mark).
HEADERS: Final = (
    ("Host", "club.example"),
    ("Accept", "application/json"),
    ("User-Agent", "club-app/4.2 (iOS 17.1)"),
    ("Accept-Encoding", "gzip, br"),
    ("Cookie", "session=9f8e7d6c5b4a; theme=dark"),
    ("X-Forwarded-For", "203.0.113.7"),
    ("X-Forwarded-Proto", "https"),
    ("X-Request-ID", "6f1d2c3b-4a59-4e8f-9b7a-0c1d2e3f4a5b"),
    ("X-Club-Shadow", "1"),
)
TARGET: Final = "/api/clubs/7/events?from=2026-12-01&limit=10"
PATHS: Final = ("ClientSession (old)", "thin pool (new)")


class SessionClients:
    """The old `CandidateClients` TCP path: one aiohttp `ClientSession` per endpoint."""

    _SKIP_AUTO_HEADERS: Final = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")

    def __init__(self, *, limit: int) -> None:
        self._limit = limit
        self._sessions: dict[tuple[str, str | None], aiohttp.ClientSession] = {}

    async def fetch(
        self,
        endpoint: tuple[str, str | None],
        method: str,
        target: str,
        headers: Mapping[str, str] | tuple[tuple[str, str], ...],
        *,
        max_body: int,
    ) -> Answer:
        session = self._session(endpoint)
        start = perf_counter()
        url = URL(endpoint[0] + target, encoded=True)
        async with session.request(
            method,
            url,
            headers=headers,
            allow_redirects=False,
            skip_auto_headers=self._SKIP_AUTO_HEADERS,
        ) as response:
            chunks: list[bytes] = []
            size = 0
            truncated = False
            while chunk := await response.content.read(64 * 1024):
                size += len(chunk)
                if size > max_body:
                    truncated = True
                    response.close()
                    break
                chunks.append(chunk)
            return Answer(
                status=response.status,
                headers=tuple(response.headers.items()),
                body=b"" if truncated else b"".join(chunks),
                truncated=truncated,
                latency=perf_counter() - start,
            )

    def _session(self, endpoint: tuple[str, str | None]) -> aiohttp.ClientSession:
        session = self._sessions.get(endpoint)
        if session is None or session.closed:
            connector = aiohttp.TCPConnector(limit=self._limit, limit_per_host=self._limit)
            session = self._sessions[endpoint] = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                timeout=aiohttp.ClientTimeout(total=None),
            )
        return session

    async def close(self) -> None:
        sessions, self._sessions = self._sessions, {}
        for session in sessions.values():
            await session.close()


Clients = SessionClients | CandidateClients


async def _cell(
    clients: Clients, endpoint: tuple[str, None], concurrency: int
) -> tuple[float, float]:
    """(CPU seconds, wall seconds) per fetch over one cell; every answer checked after."""
    fetches = FETCHES[concurrency]
    per_worker = fetches // concurrency
    answers: list[Answer] = []

    async def worker() -> None:
        answers.extend(
            [
                await clients.fetch(endpoint, "GET", TARGET, HEADERS, max_body=MAX_BODY)
                for _ in range(per_worker)
            ]
        )

    wall, cpu = time.perf_counter(), time.process_time()
    if concurrency == 1:
        await worker()
    else:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    done = per_worker * concurrency
    bad = [a for a in answers if a.status != 200 or a.body != BODY or a.truncated]
    if bad or len(answers) != done:
        msg = f"{len(bad)} wrong answers of {len(answers)} (expected {done})"
        raise RuntimeError(msg)
    return cpu / done, wall / done


async def _measure(port: int) -> dict[tuple[str, int], list[tuple[float, float]]]:
    endpoint = (f"http://127.0.0.1:{port}", None)
    clients: dict[tuple[str, int], Clients] = {}
    for concurrency in FETCHES:
        # A client per cell, as the runtime has one per process with `limit` = its workers.
        clients[PATHS[0], concurrency] = SessionClients(limit=16)
        clients[PATHS[1], concurrency] = CandidateClients(limit=16)
    cells = list(clients)
    samples: dict[tuple[str, int], list[tuple[float, float]]] = {cell: [] for cell in cells}
    try:
        for cell in cells:  # warm-up: connections open, code paths hot
            await _cell(clients[cell], endpoint, cell[1])
        for n in range(ROUNDS):
            order = cells[n % len(cells) :] + cells[: n % len(cells)]
            for cell in order:
                samples[cell].append(await _cell(clients[cell], endpoint, cell[1]))
    finally:
        for made in clients.values():
            await made.close()
    return samples


def _us(values: list[float]) -> str:
    return (
        f"{statistics.median(values) * 1e6:.1f} ({min(values) * 1e6:.1f}-{max(values) * 1e6:.1f})"
    )


def _ratio(values: list[float]) -> str:
    return f"**{statistics.median(values):.2f}x** ({min(values):.2f}-{max(values):.2f})"


def _cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat (0, 0 elsewhere)."""
    try:
        fields = Path("/proc/stat").read_text(encoding="utf-8").splitlines()[0].split()[1:]
    except OSError:
        return 0, 0
    ticks = [int(f) for f in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
    return sum(ticks) - idle, sum(ticks)


def main() -> None:
    port = free_port()
    load_start = os.getloadavg()
    busy_start = _cpu_ticks()
    with tempfile.TemporaryDirectory() as tmp, (Path(tmp) / "side.stderr").open("wb") as stderr:
        side = subprocess.Popen(
            [sys.executable, "-m", "bench._sides", str(port), "same"],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            cwd=ROOT,
        )
        try:
            wait_http(f"http://127.0.0.1:{port}/")
            samples = uvloop.run(_measure(port))
        finally:
            side.terminate()
            side.wait(timeout=15)
    load_end = os.getloadavg()
    busy_end = _cpu_ticks()
    total = busy_end[1] - busy_start[1]
    busy = (busy_end[0] - busy_start[0]) / total if total else float("nan")

    rows = []
    for concurrency in FETCHES:
        for path in PATHS:
            cpu = [c for c, _ in samples[path, concurrency]]
            wall = [w for _, w in samples[path, concurrency]]
            rows.append(
                [
                    path,
                    str(concurrency),
                    _us(cpu),
                    f"{1 / statistics.median(wall):,.0f}",
                ]
            )
    table = markdown_table(
        ["client", "concurrent", "CPU us per fetch, median (min-max)", "fetches/s (wall)"], rows
    )
    ratio_rows = []
    summary = []
    for concurrency in FETCHES:
        old, new = samples[PATHS[0], concurrency], samples[PATHS[1], concurrency]
        ratios = [n[0] / o[0] for o, n in zip(old, new, strict=True)]
        saved = [(o[0] - n[0]) * 1e6 for o, n in zip(old, new, strict=True)]
        ratio_rows.append(
            [
                str(concurrency),
                _ratio(ratios),
                f"{statistics.median(saved):.1f} ({min(saved):.1f}-{max(saved):.1f})",
            ]
        )
        summary.append(
            f"{concurrency} at a time: {statistics.median([o[0] for o in old]) * 1e6:.0f} -> "
            f"{statistics.median([n[0] for n in new]) * 1e6:.0f} us ({statistics.median(ratios):.2f}x)"
        )
    ratios_table = markdown_table(
        ["concurrent", "CPU new / old (per-round ratios)", "CPU saved us per fetch"], ratio_rows
    )
    note = (
        f"One shadow copy's HTTP request, `CandidateClients.fetch` (thin pool, new) against the "
        f"aiohttp `ClientSession` path it replaced (old, same code in the bench): CPU of the "
        f"client process (`time.process_time`, uvloop) per fetch of a {len(BODY):,} B JSON answer "
        f"from bench/_sides.py `same` in its own process, {len(HEADERS)} request headers, "
        f"keep-alive, limit 16 connections. {FETCHES[1]:,} fetches one at a time or "
        f"{FETCHES[16]:,} by 16 concurrent workers per cell; {ROUNDS} rounds, the four cells "
        f"interleaved in a rotating order after a warm-up; median (min-max) over rounds. "
        f"Machine: nproc {os.cpu_count()}, load average {load_start[0]:.2f} at the start, "
        f"{load_end[0]:.2f} at the end; every process's CPU during the run {busy:.0%} of "
        f"the machine (shared with other sessions; this bench and its side use about one core)."
    )
    scope = (
        "Every answer is checked (status 200, the whole body, not truncated) after its cell. "
        "Counted: the copy's request head (built in candidate.py for the new path, by "
        "aiohttp's ClientRequest for the old), the pool, the write, the event loop's wake-ups "
        "and aiohttp's response parser (both paths use it). Not counted: the side's CPU, "
        "the comparison, the runtime's queue and workers. Copies to the in-process app's "
        "Unix socket still go through ClientSession (the thin pool connects over TCP only) "
        "and are not measured here."
    )
    text = f"{note}\n\n{table}\n\n{ratios_table}\n\nSummary: {'; '.join(summary)}.\n\n{scope}"
    print(text)
    record("candidate", text)


if __name__ == "__main__":
    main()
