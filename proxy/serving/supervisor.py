"""The master process of `club-proxy run --workers N`: start, watch and respawn workers.

As nginx's master does, it starts N worker processes, forwards SIGTERM,
SIGINT and SIGHUP to them, and starts a new worker in place of one that
exits on its own (a crash, an out-of-memory kill), so one bad request that
kills a worker costs that worker's connections, not a share of the port for
good.

- A worker that had said it was serving is respawned at once.
- One that died before (it could not start: say routes.yaml was left invalid,
  which a running worker survives but a new one cannot load) is respawned
  after a pause that doubles each time, up to `MAX_BACKOFF`: it does not spin,
  the other workers keep serving, and it comes back by itself once the cause
  is fixed.
- If a worker of the first start cannot start, the master stops the others
  and exits 1, as one process would: nothing has ever served.
- After SIGTERM/SIGINT nothing is respawned; the master waits for every worker
  (SIGKILL for any still there after `kill_after` seconds) and exits 1 if one
  failed.

Signals are blocked while a worker is started: the new process inherits the
block (spawn is fork + exec, which keep the signal mask), so a stop signal that
comes while it is still importing waits until `unblock_stop_signals` (called
by the worker once its own handlers are in place) and then drains it, instead
of killing it half-started; and the master's handler never misses a worker
that is being started.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import time
from typing import TYPE_CHECKING, Final, TypeAlias

if TYPE_CHECKING:
    from collections.abc import Callable
    from multiprocessing.process import BaseProcess
    from multiprocessing.synchronize import Event

__all__ = ["MAX_BACKOFF", "WorkerMain", "supervise", "unblock_stop_signals"]

logger = logging.getLogger(__name__)

# A worker's entry point: its index, and what to call once it serves.
WorkerMain: TypeAlias = "Callable[[int, Callable[[], None]], None]"

MAX_BACKOFF: Final = 10.0
_FIRST_BACKOFF: Final = 0.1
_STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)
_FORWARDED: Final = frozenset({*_STOP_SIGNALS, signal.SIGHUP})


def unblock_stop_signals() -> None:
    """In a worker, once its handlers are in place: take the signals held since its start."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARDED)


class _Workers:
    def __init__(self, target: WorkerMain) -> None:
        self._context = multiprocessing.get_context("spawn")
        self._target = target
        self.running: dict[int, BaseProcess] = {}
        self.started_at: dict[int, float] = {}
        self.serving: dict[int, Event] = {}
        self.stop_requested_at: float | None = None
        # "pid: exit code" of the workers that failed while stopping.
        self.failures: list[str] = []

    @property
    def stopping(self) -> bool:
        return self.stop_requested_at is not None

    def start(self, index: int) -> None:
        serving = self._context.Event()
        process = self._context.Process(
            target=self._target, args=(index, serving.set), name=f"club-proxy-{index}"
        )
        held = signal.pthread_sigmask(signal.SIG_BLOCK, _FORWARDED)
        try:
            process.start()
            self.running[index] = process
            self.started_at[index] = time.monotonic()
            self.serving[index] = serving
            if self.stopping and process.pid is not None:
                # A stop whose handler ran before this process was listed
                # (Python runs handlers between bytecodes, even while blocked).
                os.kill(process.pid, signal.SIGTERM)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)

    def signal_all(self, signum: int) -> None:
        for process in self.running.values():
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signum)

    def on_signal(self, signum: int, _frame: object) -> None:
        if signum in _STOP_SIGNALS:
            if self.stop_requested_at is None:
                self.stop_requested_at = time.monotonic()
            signum = signal.SIGTERM  # workers drain on SIGTERM
        self.signal_all(signum)

    def stop(self) -> None:
        self.on_signal(signal.SIGTERM, None)

    def reap(self, timeout: float | None) -> list[tuple[int, BaseProcess]]:
        """The workers that have exited, waiting up to `timeout` for one."""
        sentinels = [process.sentinel for process in self.running.values()]
        ready = set(multiprocessing.connection.wait(sentinels, timeout))
        ended = [(i, p) for i, p in self.running.items() if p.sentinel in ready]
        for index, process in ended:
            process.join()
            del self.running[index]
        return ended


def supervise(count: int, target: WorkerMain, *, kill_after: float) -> int:
    """Run `target(index, on_serving)` in `count` processes until SIGTERM/SIGINT; the exit code."""
    workers = _Workers(target)
    for sig in _FORWARDED:
        signal.signal(sig, workers.on_signal)
    for index in range(count):
        workers.start(index)
    respawns = _Respawns(count)
    while workers.running or (respawns.due and not workers.stopping):
        timeout = _step(workers, respawns, kill_after)
        for index, process in workers.reap(timeout):
            respawns.ended(workers, index, process)
    if respawns.start_failed:
        return 1
    if workers.failures:
        logger.error("proxy.worker_failed", extra={"exit_codes": workers.failures})
        return 1
    return 0


def _step(workers: _Workers, respawns: _Respawns, kill_after: float) -> float | None:
    """Start the respawns that are due (or kill what outlived a stop); how long to wait."""
    now = time.monotonic()
    if workers.stop_requested_at is not None:
        respawns.due.clear()
        deadline = workers.stop_requested_at + kill_after
        if now >= deadline:
            logger.error("proxy.worker_kill", extra={"after_s": kill_after})
            workers.signal_all(signal.SIGKILL)
        return max(deadline - now, 0.1)
    for index in [i for i, due in respawns.due.items() if due <= now]:
        del respawns.due[index]
        workers.start(index)
    return min(respawns.due.values()) - now if respawns.due else None


class _Respawns:
    """When each ended worker starts again (`due`), from how it ended."""

    def __init__(self, count: int) -> None:
        self.due: dict[int, float] = {}
        self.ever_served: set[int] = set()
        self.quick_deaths = dict.fromkeys(range(count), 0)
        self.start_failed = False

    def ended(self, workers: _Workers, index: int, process: BaseProcess) -> None:
        code = process.exitcode
        served = workers.serving[index].is_set()
        if served:
            self.ever_served.add(index)
        if workers.stopping:
            if code:
                workers.failures.append(f"{process.pid}: {code}")
            return
        log = {
            "worker": index,
            "pid": process.pid,
            "exit_code": code,
            "uptime_s": round(time.monotonic() - workers.started_at[index], 3),
            "had_started": served,
        }
        if index not in self.ever_served:
            # Nothing has served in this slot since `club-proxy run` began.
            logger.error("proxy.worker_start_failed", extra=log)
            self.start_failed = True
            workers.stop()
            return
        self.quick_deaths[index] = 0 if served else self.quick_deaths[index] + 1
        pause = 0.0
        if self.quick_deaths[index]:
            pause = min(_FIRST_BACKOFF * 2 ** (self.quick_deaths[index] - 1), MAX_BACKOFF)
        logger.error("proxy.worker_died", extra={**log, "respawn_in_s": pause})
        self.due[index] = time.monotonic() + pause
