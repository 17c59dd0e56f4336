"""Run the proxy: one event loop per process, N processes on one port.

With `workers > 1` a supervisor (`proxy.serving.supervisor`) starts N worker
processes that each bind the proxy port with SO_REUSEPORT (the kernel spreads
connections), forwards SIGTERM/SIGINT/SIGHUP to them and respawns one that
dies. Each worker has its own admin API on `admin_port + index`, its own
metrics and its own route watcher.

Shutdown on SIGTERM (or SIGINT) is graceful: /-/ready turns 503, the listening
socket closes, requests in flight get up to `drain_timeout` seconds to finish
(aiohttp's runner shutdown), then the rest are cancelled and resources closed.
uvloop is used when it is installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import functools
import gc
import logging
import os
import signal
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from proxy.core.headers import ForwardingPolicy
from proxy.errors import ProxyError
from proxy.routing.model import ShadowStore
from proxy.serving.admin import check_admin_binding, create_admin_app
from proxy.serving.app import PROXY, ShadowLimits, create_app
from proxy.serving.check import check_routes
from proxy.serving.protocol import ProxyAppRunner
from proxy.serving.supervisor import supervise, unblock_stop_signals
from proxy.telemetry.accesslog import configure_logging, stdout_access_log

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Iterator
    from pathlib import Path
    from typing import Any

    from proxy.telemetry.accesslog import AccessLog

__all__ = ["ServeConfig", "build_app", "run", "serve"]

logger = logging.getLogger(__name__)

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# How long after drain_timeout a worker that has not stopped is killed.
_KILL_MARGIN = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ServeConfig:
    """Everything `club-proxy run` takes (see `proxy.__main__`)."""

    routes_path: Path
    host: str = "127.0.0.1"
    port: int = 8000
    admin_host: str = "127.0.0.1"
    admin_port: int | None = 9901  # None: no admin API
    admin_token: str | None = None
    workers: int = 1
    trusted_proxies: tuple[str, ...] = ()
    # This proxy's name in `Via`: tiers in series need different ones, or the
    # second answers 508 (loop) to everything the first relays.
    pseudonym: str = "club-proxy"
    # Forward request header names with `_` (nginx's underscores_in_headers).
    underscores_in_headers: bool = False
    drain_timeout: float = 30.0
    backlog: int = 1024
    log_level: str = "INFO"
    access_log: bool = True
    fast_lane: bool = True
    # Where shadow results go (overrides routes.yaml's shadow_store: dsn).
    shadow_dsn: str | None = None
    shadow_queue: int = 1024
    shadow_workers: int = 16
    shadow_rate: float = 200.0

    def __post_init__(self) -> None:
        if self.workers < 1:
            msg = f"workers must be at least 1, not {self.workers}"
            raise ValueError(msg)
        if self.shadow_queue < 1 or self.shadow_workers < 1 or self.shadow_rate < 0:
            msg = "shadow_queue and shadow_workers must be at least 1, shadow_rate at least 0"
            raise ValueError(msg)
        if self.drain_timeout < 0:
            msg = f"drain_timeout must not be negative, not {self.drain_timeout}"
            raise ValueError(msg)
        # Before any worker starts: a bad pseudonym or CIDR is a ValueError here.
        ForwardingPolicy.from_cidrs(self.trusted_proxies, pseudonym=self.pseudonym)


# glibc's mallopt() parameter and the size below which blocks come from the heap.
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 1 << 20


def _tune_allocator() -> None:
    """Keep the event loop's read buffers (up to 256 KiB each) on the heap.

    glibc serves blocks over its mmap threshold (128 KiB until it adapts) with
    a fresh mmap, so a large answer cost a map, page faults and an unmap per
    socket read. A fixed 1 MiB threshold cut the CPU per proxied 1 MiB answer
    by 8-12% in three of four A/B runs on the bench machine (the fourth was
    within noise). Not glibc (musl, macOS): nothing to do.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)


def _run_loop(main: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop  # noqa: PLC0415 - optional
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


async def serve(
    config: ServeConfig,
    *,
    index: int = 0,
    reuse_port: bool = False,
    on_serving: Callable[[], None] | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT, then drain and stop (one process).

    `on_serving` is called once the proxy listens (the supervisor's signal).
    """
    with _stop_signals() as stop:
        await _serve(config, index, reuse_port, on_serving, stop)


async def _serve(
    config: ServeConfig,
    index: int,
    reuse_port: bool,  # noqa: FBT001 - internal, positional from serve()
    on_serving: Callable[[], None] | None,
    stop: asyncio.Event,
) -> None:
    _tune_allocator()
    access_log = stdout_access_log(enabled=config.access_log)
    app = build_app(config, access_log=access_log)
    proxy = app[PROXY]
    runner = ProxyAppRunner(app, handle_signals=False, shutdown_timeout=config.drain_timeout)
    await runner.setup()
    # Every handler is in place now (stop signals, SIGHUP): take what a
    # supervisor's start held back (`proxy.serving.supervisor`).
    unblock_stop_signals()
    admin_runner: web.AppRunner | None = None
    try:
        site = web.TCPSite(
            runner, config.host, config.port, reuse_port=reuse_port, backlog=config.backlog
        )
        await site.start()
        if config.admin_port is not None:
            admin_runner = web.AppRunner(
                create_admin_app(app, token=config.admin_token), access_log=None
            )
            await _start_admin(admin_runner, config, index)
        if on_serving is not None:
            on_serving()  # first: whoever reads "listening" may count on it
        _log_listening(config, index)
        # Everything built so far lives as long as the process: keep it out of
        # the collector's generations so a collection only walks request garbage.
        gc.collect()
        gc.freeze()
        await stop.wait()
        logger.info("proxy.draining", extra={"worker": index, "timeout": config.drain_timeout})
        proxy.ready = False
    finally:
        # Stops accepting, waits for requests in flight up to drain_timeout,
        # then runs the app's cleanup (watcher, pools, in-process app).
        await runner.cleanup()
        if admin_runner is not None:
            await admin_runner.cleanup()
        access_log.close()
    logger.info("proxy.stopped", extra={"worker": index})


def build_app(config: ServeConfig, *, access_log: AccessLog | None = None) -> web.Application:
    """The proxy application `serve` runs for `config`."""
    return create_app(
        routes_path=config.routes_path,
        trusted_proxies=config.trusted_proxies,
        pseudonym=config.pseudonym,
        underscores_in_headers=config.underscores_in_headers,
        access_log=access_log,
        fast_lane=config.fast_lane,
        shadow_store=ShadowStore(dsn=config.shadow_dsn) if config.shadow_dsn else None,
        shadow=ShadowLimits(
            queue_size=config.shadow_queue,
            workers=config.shadow_workers,
            rate=config.shadow_rate,
        ),
    )


async def _start_admin(admin_runner: web.AppRunner, config: ServeConfig, index: int) -> None:
    await admin_runner.setup()
    admin_port = config.admin_port + index if config.admin_port else 0
    await web.TCPSite(admin_runner, config.admin_host, admin_port).start()


def _log_listening(config: ServeConfig, index: int) -> None:
    admin = f"http://{config.admin_host}:{config.admin_port + index}" if config.admin_port else None
    logger.info(
        "proxy.listening",
        extra={
            "url": f"http://{config.host}:{config.port}",
            "admin": admin,
            "worker": index,
            "pid": os.getpid(),
        },
    )


@contextlib.contextmanager
def _stop_signals() -> Iterator[asyncio.Event]:
    """An event set by SIGTERM/SIGINT, from the start of `serve`.

    Installed before the port is bound: a stop signal that comes while the
    process is still starting (a supervisor stopping a worker it has just
    respawned) then drains it like any other, instead of killing it.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in _STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    try:
        yield stop
    finally:
        for sig in _STOP_SIGNALS:
            loop.remove_signal_handler(sig)


def _worker(config: ServeConfig, index: int, on_serving: Callable[[], None]) -> None:
    configure_logging(config.log_level, access_log=config.access_log)
    _run_loop(serve(config, index=index, reuse_port=True, on_serving=on_serving))


def run(config: ServeConfig) -> int:
    """Serve with `config.workers` processes; the exit code of the whole run."""
    check_admin_binding(config.admin_host, config.admin_token)
    # Fail before any process starts, on exactly what `club-proxy check`
    # rejects (as nginx will not start on what `nginx -t` rejects): each
    # problem names file, line and key, including a route to `new` that the
    # new app has no handler for.
    problems = check_routes(config.routes_path)
    if problems:
        raise ProxyError("\n".join(problems))
    if config.workers == 1:
        _run_loop(serve(config))
        return 0
    # Workers drain for up to drain_timeout; the master kills what is left a bit later.
    kill_after = config.drain_timeout + _KILL_MARGIN
    return supervise(config.workers, functools.partial(_worker, config), kill_after=kill_after)
