"""`make compose-test`: docker-compose.yml brought up for real and checked through the load balancer.

    python -m deploy.compose_test [--keep] [--no-build]

Runs its own compose project (`club-proxy-compose-test`) on free loopback
ports, with a random admin token and a copy of deploy/routes/ as the routes
directory (so the repository's file is never edited), and checks, printing
each result:

1. the demo endpoints answer through nginx as they do without containers;
2. a WebSocket on one replica receives a direct message sent through the other;
3. an edit of the host's routes.yaml reaches both replicas within 2 seconds
   (both admin `/-/routes` digests), and moves `/ws` and the direct messages to
   new_services; the WebSocket check again, now through the Redis hub;
4. shadow results from both replicas land in one verdict (the same totals on
   both admin APIs);
5. `docker stop` of one replica (SIGTERM: drain) under a steady stream of GETs
   loses no request and exits 0 within the stop timeout; the replica comes back;
6. `docker kill` of one replica under a steady stream of GETs loses no request;
7. `docker-compose down -v` leaves no container, network or volume.

Exit status 0 when every check passed, 1 otherwise; the stack is always torn
down (unless --keep). Standard library and aiohttp only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "club-proxy-compose-test"
RELOAD_DEADLINE = 2.0
UP_TIMEOUT = 180.0
STOP_TIMEOUT = 20.0  # docker-compose.yml's stop_grace_period for the proxies
STREAM_CONCURRENCY = 8
HTTP_OK = 200


def say(text: str) -> None:
    sys.stdout.write(f"{text}\n")
    sys.stdout.flush()


class CheckFailedError(Exception):
    """One check did not hold; the message says what was seen."""


def fail(message: str) -> NoReturn:
    raise CheckFailedError(message)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(slots=True)
class Stack:
    """The compose project under test: its ports, token and routes directory."""

    routes_dir: Path
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    http_port: int = field(default_factory=free_port)
    admin_ports: tuple[int, int] = field(default_factory=lambda: (free_port(), free_port()))

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def admin(self, replica: int) -> str:
        return f"http://127.0.0.1:{self.admin_ports[replica - 1]}"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def routes_file(self) -> Path:
        return self.routes_dir / "routes.yaml"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "COMPOSE_PROJECT_NAME": PROJECT,
            "CLUB_BIND": "127.0.0.1",
            "CLUB_HTTP_PORT": str(self.http_port),
            "CLUB_ADMIN_PORT_1": str(self.admin_ports[0]),
            "CLUB_ADMIN_PORT_2": str(self.admin_ports[1]),
            "CLUB_PROXY_ADMIN_TOKEN": self.token,
            "CLUB_ROUTES_DIR": str(self.routes_dir),
        }

    def compose(self, *args: str, check: bool = True) -> str:
        command = ["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "-p", PROJECT, *args]
        done = subprocess.run(  # noqa: S603  (fixed arguments)
            command, env=self.env(), cwd=ROOT, capture_output=True, text=True, check=False
        )
        if check and done.returncode != 0:
            msg = f"{' '.join(command)}: exit {done.returncode}\n{done.stdout}{done.stderr}"
            raise CheckFailedError(msg)
        return done.stdout

    def container(self, service: str) -> str:
        """The container id of a service (the first one)."""
        ids = self.compose("ps", "-q", service).split()
        if not ids:
            fail(f"no container for {service}")
        return ids[0]

    def address(self, service: str) -> str:
        """The service's IP address on the compose network."""
        out = docker(
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
            self.container(service),
        )
        return out.split()[0]


def docker(*args: str, check: bool = True) -> str:
    done = subprocess.run(  # noqa: S603  (fixed arguments)
        ["docker", *args],  # noqa: S607
        capture_output=True,
        text=True,
        check=False,
    )
    if check and done.returncode != 0:
        msg = f"docker {' '.join(args)}: exit {done.returncode}\n{done.stderr}"
        raise CheckFailedError(msg)
    return done.stdout


# --- waiting ---------------------------------------------------------------------------------


async def wait_http(
    session: aiohttp.ClientSession, url: str, *, headers: dict[str, str], within: float
) -> None:
    deadline = time.monotonic() + within
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            async with session.get(url, headers=headers) as resp:
                if resp.status == HTTP_OK:
                    return
                last = f"status {resp.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            last = repr(exc)
        await asyncio.sleep(0.5)
    fail(f"{url} not ready within {within:.0f}s: {last}")


async def wait_stack(session: aiohttp.ClientSession, stack: Stack) -> None:
    await wait_http(session, f"{stack.base}/health", headers={}, within=UP_TIMEOUT)
    for replica in (1, 2):
        await wait_http(
            session, f"{stack.admin(replica)}/-/ready", headers=stack.auth, within=UP_TIMEOUT
        )


# --- checks ----------------------------------------------------------------------------------


async def get_json(
    session: aiohttp.ClientSession, url: str, *, headers: dict[str, str] | None = None
) -> tuple[int, Any, aiohttp.typedefs.LooseHeaders]:
    async with session.get(url, headers=headers or {}) as resp:
        body = await resp.read()
        data = json.loads(body) if body else None
        return resp.status, data, resp.headers


def expect(condition: bool, what: str) -> None:  # noqa: FBT001
    if not condition:
        raise CheckFailedError(what)


async def check_endpoints(session: aiohttp.ClientSession, stack: Stack) -> str:
    b = stack.base
    seen: list[str] = []

    async def get(path: str, status: int) -> Any:
        code, data, _ = await get_json(session, f"{b}{path}")
        expect(code == status, f"GET {path}: {code}, expected {status}: {data}")
        seen.append(f"GET {path} {code}")
        return data

    health = await get("/health", 200)
    expect(isinstance(health, dict), f"/health: {health}")
    stats = await get("/api/stats", 200)
    expect(
        set(stats) >= {"users", "active_users", "events", "active_events", "registrations"},
        f"/api/stats keys: {stats}",
    )
    user = await get("/api/users/1", 200)
    expect(user["id"] == 1 and "email" in user, f"/api/users/1: {user}")
    await get("/api/users/999999", 404)
    await get("/api/users/abc", 400)
    users = await get("/api/users?limit=3", 200)
    expect(len(users["items"]) == 3, f"/api/users?limit=3: {users}")  # noqa: PLR2004
    events = await get("/api/events?limit=3", 200)
    expect(len(events["items"]) == 3, f"/api/events?limit=3: {events}")  # noqa: PLR2004
    event = await get("/api/events/2", 200)
    expect(event["id"] == 2, f"/api/events/2: {event}")  # noqa: PLR2004
    await get("/api/events/999999", 404)

    token3 = {"Authorization": "Bearer seed-token-3"}
    url = f"{b}/api/events/5/registrations"
    async with session.post(url, headers=token3) as resp:
        created = await resp.json(content_type=None)
        expect(resp.status == 201, f"POST registration: {resp.status} {created}")  # noqa: PLR2004
        expect(created["user_id"] == 3 and created["event_id"] == 5, f"registration: {created}")  # noqa: PLR2004
    seen.append("POST /api/events/5/registrations 201")
    async with session.post(url, headers=token3) as resp:
        expect(resp.status == 409, f"second POST registration: {resp.status}")  # noqa: PLR2004
    seen.append("POST again 409")
    async with session.post(url) as resp:
        expect(resp.status == 401, f"POST without a token: {resp.status}")  # noqa: PLR2004
    seen.append("POST without token 401")
    async with session.delete(f"{url}/me", headers=token3) as resp:
        expect(resp.status == 204, f"DELETE registration: {resp.status}")  # noqa: PLR2004
    seen.append("DELETE /api/events/5/registrations/me 204")
    return f"{len(seen)} answers as documented"


def replica_of(headers: Any, addresses: dict[str, int]) -> int | None:
    upstream = str(headers.get("X-Club-Upstream", ""))
    # After a retry nginx lists every upstream tried: the last one answered.
    last = upstream.rsplit(",", 1)[-1].strip().rsplit(":", 1)[0]
    return addresses.get(last)


async def check_websocket(session: aiohttp.ClientSession, stack: Stack) -> str:
    """A socket opened through nginx on one replica; messages sent until one goes through the other."""
    addresses = {stack.address("proxy-1"): 1, stack.address("proxy-2"): 2}
    async with session.ws_connect(f"{stack.base}/ws?token=seed-token-2", heartbeat=None) as ws:
        ws_replica = replica_of(ws._response.headers, addresses)  # noqa: SLF001
        expect(ws_replica is not None, f"which replica holds the socket? {addresses}")
        hello = await ws.receive_json(timeout=10)
        expect(hello.get("type") == "hello", f"first frame: {hello}")
        for attempt in range(10):
            text = f"compose-test {attempt} {secrets.token_hex(4)}"
            async with session.post(
                f"{stack.base}/api/users/2/messages",
                json={"text": text},
                headers={"Authorization": "Bearer seed-token-1"},
            ) as resp:
                expect(resp.status == 202, f"POST message: {resp.status}")  # noqa: PLR2004
                sender = replica_of(resp.headers, addresses)
            if sender is None or sender == ws_replica:
                # The same replica: drain its delivery, then try again.
                with contextlib.suppress(TimeoutError):
                    await ws.receive_json(timeout=2)
                continue
            while True:
                frame = await ws.receive_json(timeout=10)
                if frame.get("text") == text:
                    expect(frame.get("type") == "direct_message", f"frame: {frame}")
                    return f"socket on proxy-{ws_replica}, message sent through proxy-{sender}"
    fail("no message went through the other replica in 10 tries")


async def routes_digest(session: aiohttp.ClientSession, stack: Stack, replica: int) -> str:
    _, data, _ = await get_json(session, f"{stack.admin(replica)}/-/routes", headers=stack.auth)
    return str(data["active"]["digest"])


async def route_target(
    session: aiohttp.ClientSession, stack: Stack, replica: int, route_id: str
) -> str:
    _, data, _ = await get_json(session, f"{stack.admin(replica)}/-/routes", headers=stack.auth)
    for route in data["active"]["routes"]:
        if route["id"] == route_id:
            return str(route["to"])
    fail(f"proxy-{replica}: no route {route_id}")


def flip_to_new(text: str, route_id: str) -> str:
    """routes.yaml with the one-line route `route_id` sent to new instead of legacy."""
    lines = text.splitlines(keepends=True)
    marker = f"{{id: {route_id},"
    hits = [n for n, line in enumerate(lines) if marker in line and "to: legacy}" in line]
    if len(hits) != 1:
        fail(f"routes.yaml: cannot flip {route_id} to new")
    lines[hits[0]] = lines[hits[0]].replace("to: legacy}", "to: new}")
    return "".join(lines)


async def check_routes_edit(session: aiohttp.ClientSession, stack: Stack) -> str:
    """Flip /ws and the direct messages to new, as the host would: write, then rename."""
    before = [await route_target(session, stack, r, "ws") for r in (1, 2)]
    expect(before == ["legacy", "legacy"], f"ws before the edit: {before}")
    text = stack.routes_file.read_text(encoding="utf-8")
    text = flip_to_new(flip_to_new(text, "ws"), "user-message")
    data = text.encode()
    want = hashlib.sha256(data).hexdigest()
    tmp = stack.routes_dir / ".routes.yaml.tmp"
    tmp.write_bytes(data)
    started = time.monotonic()
    tmp.replace(stack.routes_file)
    reached: dict[int, float] = {}
    while len(reached) < 2 and time.monotonic() - started < RELOAD_DEADLINE + 3:  # noqa: PLR2004
        for replica in (1, 2):
            if replica not in reached and await routes_digest(session, stack, replica) == want:
                reached[replica] = time.monotonic() - started
        await asyncio.sleep(0.05)
    took = ", ".join(f"proxy-{r} {t:.2f}s" for r, t in sorted(reached.items()))
    expect(len(reached) == 2, f"the edit reached only {took or 'no replica'}")  # noqa: PLR2004
    expect(max(reached.values()) <= RELOAD_DEADLINE, f"too slow: {took}")
    after = [await route_target(session, stack, r, "ws") for r in (1, 2)]
    expect(after == ["new", "new"], f"ws after the edit: {after}")
    return f"ws and user-message now on new: {took}"


def shadow_counts(data: Any) -> dict[str, Any]:
    for route in data["routes"]:
        if route["id"] == "events-list":
            keys = ("compared", "matched", "mismatched", "noise", "errors", "skipped", "verdict")
            return {key: route[key] for key in keys}
    return {}


async def check_shadow(session: aiohttp.ClientSession, stack: Stack) -> str:
    """GETs of the shadowed list through nginx (both replicas), then one verdict on both."""
    addresses = {stack.address("proxy-1"): 1, stack.address("proxy-2"): 2}
    served = {1: 0, 2: 0}
    sent = 40
    for n in range(sent):
        async with session.get(f"{stack.base}/api/events?limit=5&offset={n}") as resp:
            expect(resp.status == HTTP_OK, f"GET /api/events: {resp.status}")
            await resp.read()
            replica = replica_of(resp.headers, addresses)
            if replica is not None:
                served[replica] += 1
    expect(served[1] > 0 and served[2] > 0, f"nginx spread: {served}")
    deadline = time.monotonic() + 20
    counts: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        counts = []
        for replica in (1, 2):
            _, data, _ = await get_json(
                session, f"{stack.admin(replica)}/-/shadow", headers=stack.auth
            )
            expect(data["store"] == "postgresql", f"proxy-{replica} store: {data['store']}")
            counts.append(shadow_counts(data))
        seen = counts[0].get("compared", 0) + counts[0].get("noise", 0) + counts[0].get("errors", 0)
        if counts[0] == counts[1] and seen >= sent:
            return f"proxy-1 served {served[1]}, proxy-2 {served[2]}; both report {counts[0]}"
        await asyncio.sleep(0.5)
    fail(f"the replicas disagree or miss results: {counts}")


@dataclass(slots=True)
class StreamResult:
    ok: int = 0
    failed: list[str] = field(default_factory=list)
    slowest: float = 0.0
    retried: int = 0  # answered by the second replica nginx tried

    def summary(self) -> str:
        return (
            f"{self.ok} GETs, {len(self.failed)} lost, {self.retried} retried by nginx "
            f"on the other replica (slowest {self.slowest:.2f}s)"
        )


async def steady_stream(
    session: aiohttp.ClientSession, url: str, stop: asyncio.Event
) -> StreamResult:
    result = StreamResult()

    async def one_client() -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                async with session.get(url) as resp:
                    await resp.read()
                    if "," in resp.headers.get("X-Club-Upstream", ""):
                        result.retried += 1
                    if resp.status == HTTP_OK:
                        result.ok += 1
                    else:
                        result.failed.append(f"status {resp.status}")
            except (aiohttp.ClientError, TimeoutError) as exc:
                result.failed.append(repr(exc))
            result.slowest = max(result.slowest, time.monotonic() - started)

    await asyncio.gather(*(one_client() for _ in range(STREAM_CONCURRENCY)))
    return result


async def under_stream(
    session: aiohttp.ClientSession,
    stack: Stack,
    action: Any,
    *,
    after: float = 2.0,
    tail: float = 4.0,
) -> tuple[StreamResult, Any]:
    stop = asyncio.Event()
    stream = asyncio.create_task(steady_stream(session, f"{stack.base}/api/events/3", stop))
    await asyncio.sleep(after)
    outcome = await asyncio.to_thread(action)
    await asyncio.sleep(tail)
    stop.set()
    return await stream, outcome


async def check_graceful_stop(session: aiohttp.ClientSession, stack: Stack) -> str:
    container = stack.container("proxy-1")

    def stop() -> tuple[float, str]:
        started = time.monotonic()
        docker("stop", "-t", str(int(STOP_TIMEOUT)), container)
        took = time.monotonic() - started
        return took, docker("inspect", "-f", "{{.State.ExitCode}}", container).strip()

    result, (took, code) = await under_stream(session, stack, stop)
    expect(
        not result.failed,
        f"lost {len(result.failed)} of {result.ok + len(result.failed)}: {result.failed[:3]}",
    )
    expect(code == "0", f"proxy-1 exit code after SIGTERM: {code}")
    expect(took < STOP_TIMEOUT, f"proxy-1 took {took:.1f}s to stop")
    # Back, as after an upgrade: start it, wait until ready, let nginx re-resolve.
    stack.compose("up", "-d", "--no-deps", "proxy-1")
    await wait_http(session, f"{stack.admin(1)}/-/ready", headers=stack.auth, within=60)
    stack.compose("exec", "-T", "lb", "nginx", "-s", "reload")
    await asyncio.sleep(1)
    return f"{result.summary()}; proxy-1 drained and exited 0 in {took:.1f}s, then came back"


async def check_kill(session: aiohttp.ClientSession, stack: Stack) -> str:
    container = stack.container("proxy-2")
    result, _ = await under_stream(session, stack, lambda: docker("kill", container))
    total = result.ok + len(result.failed)
    expect(not result.failed, f"lost {len(result.failed)} of {total}: {result.failed[:3]}")
    return result.summary()


def check_down(stack: Stack) -> str:
    stack.compose("down", "-v", "--remove-orphans")
    label = f"label=com.docker.compose.project={PROJECT}"
    left = {
        "containers": docker("ps", "-aq", "--filter", label).split(),
        "networks": docker("network", "ls", "-q", "--filter", label).split(),
        "volumes": docker("volume", "ls", "-q", "--filter", label).split(),
    }
    expect(not any(left.values()), f"left behind: {left}")
    return "no container, network or volume left"


# --- the run ---------------------------------------------------------------------------------


class Runner:
    def __init__(self) -> None:
        self.failures = 0
        self.started = time.monotonic()

    async def check(self, name: str, step: Any, *args: Any) -> bool:
        started = time.monotonic()
        try:
            result = step(*args)
            if asyncio.iscoroutine(result):
                result = await result
        except (CheckFailedError, aiohttp.ClientError, TimeoutError, KeyError) as exc:
            self.failures += 1
            say(f"FAIL {name} ({time.monotonic() - started:.1f}s): {exc!r}")
            return False
        say(f"ok   {name} ({time.monotonic() - started:.1f}s): {result}")
        return True


async def run(stack: Stack, *, build: bool) -> int:
    runner = Runner()
    if build:
        ok = await runner.check(
            "build the image",
            lambda: stack.compose("build", "-q") or "image club-proxy:local built",
        )
        if not ok:
            return 1
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def up() -> str:
            await asyncio.to_thread(stack.compose, "up", "-d")
            await wait_stack(session, stack)
            return f"nginx on {stack.base}, admin on {stack.admin(1)} and {stack.admin(2)}"

        if await runner.check("docker-compose up", up):
            await runner.check("demo endpoints through nginx", check_endpoints, session, stack)
            await runner.check(
                "websocket across replicas (legacy)", check_websocket, session, stack
            )
            if await runner.check(
                "routes edit reaches both replicas", check_routes_edit, session, stack
            ):
                await runner.check(
                    "websocket across replicas (new_services, Redis hub)",
                    check_websocket,
                    session,
                    stack,
                )
            await runner.check(
                "one shadow verdict from both replicas", check_shadow, session, stack
            )
            await runner.check("SIGTERM of proxy-1 under load", check_graceful_stop, session, stack)
            await runner.check("docker kill of proxy-2 under load", check_kill, session, stack)
    await runner.check("docker-compose down -v", check_down, stack)
    say(
        f"{'FAILED' if runner.failures else 'passed'}: {runner.failures} failure(s), {time.monotonic() - runner.started:.0f}s"
    )
    return 1 if runner.failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.compose_test", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--keep", action="store_true", help="leave the stack running")
    parser.add_argument("--no-build", action="store_true", help="use the image already built")
    args = parser.parse_args(argv)
    if (
        shutil.which("docker-compose") is None
        or subprocess.run(
            ["docker", "info"],  # noqa: S607
            capture_output=True,
            check=False,
        ).returncode
    ):
        say("docker or docker-compose is not available here: nothing was tested")
        return 2
    with tempfile.TemporaryDirectory(prefix="club-compose-test-") as tmp:
        routes_dir = Path(tmp) / "routes"
        shutil.copytree(ROOT / "deploy" / "routes", routes_dir)
        routes_dir.chmod(0o755)
        stack = Stack(routes_dir=routes_dir)
        stack.compose("down", "-v", "--remove-orphans", check=False)  # a previous run's leftovers
        try:
            return asyncio.run(run(stack, build=not args.no_build))
        finally:
            if not args.keep:
                stack.compose("down", "-v", "--remove-orphans", check=False)


if __name__ == "__main__":
    raise SystemExit(main())
