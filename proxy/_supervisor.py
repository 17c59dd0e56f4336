"""The master process of `club-proxy run --workers N`: start, watch and respawn workers.

As nginx's master does, it starts N worker processes, forwards SIGTERM,
SIGINT and SIGHUP to them, and starts a new worker in place of one that
exits on its own (a crash, an out-of-memory kill), so one bad request that
kills a worker costs that worker's connections, not a share of the port for
good. A worker that dies before it said it was serving (it could not start:
say routes.yaml was left invalid, which a running worker survives but a new
one cannot load) is respawned after a pause that doubles each time, up to
`MAX_BACKOFF`: it does not spin, the other workers keep serving, and it comes
back by itself once the cause is fixed. After SIGTERM/SIGINT nothing is
respawned: the master waits for every worker and exits 1 if one failed.
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

# A worker's entry point: its index, and what to call once it serves.
WorkerMain: TypeAlias = "Callable[[int, Callable[[], None]], None]"

__all__ = ["MAX_BACKOFF", "WorkerMain", "supervise"]

logger = logging.getLogger(__name__)

MAX_BACKOFF: Final = 10.0
_FIRST_BACKOFF: Final = 0.1
_STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)


class _Workers:
    def __init__(self, count: int, target: WorkerMain) -> None:
        self._context = multiprocessing.get_context("spawn")
        self._target = target
        self.running: dict[int, BaseProcess] = {}
        self.started_at: dict[int, float] = {}
        self.serving: dict[int, Event] = {}
        self.stopping = False
        # "pid: exit code" of the workers that failed while stopping.
        self.failures: list[str] = []
        for index in range(count):
            self.start(index)

    def start(self, index: int) -> None:
        serving = self._context.Event()
        process = self._context.Process(
            target=self._target, args=(index, serving.set), name=f"club-proxy-{index}"
        )
        process.start()
        self.running[index] = process
        self.started_at[index] = time.monotonic()
        self.serving[index] = serving

    def signal_all(self, signum: int) -> None:
        for process in self.running.values():
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signum)

    def on_signal(self, signum: int, _frame: object) -> None:
        if signum in _STOP_SIGNALS:
            self.stopping = True
            signum = signal.SIGTERM  # workers drain on SIGTERM
        self.signal_all(signum)

    def reap(self) -> list[tuple[int, BaseProcess]]:
        """Wait until at least one worker has exited; the ones that have."""
        sentinels = [process.sentinel for process in self.running.values()]
        ready = set(multiprocessing.connection.wait(sentinels))
        ended = [(i, p) for i, p in self.running.items() if p.sentinel in ready]
        for index, process in ended:
            process.join()
            del self.running[index]
        return ended


def supervise(count: int, target: WorkerMain) -> int:
    """Run `target(index)` in `count` processes until SIGTERM/SIGINT; the exit code."""
    workers = _Workers(count, target)
    for sig in (*_STOP_SIGNALS, signal.SIGHUP):
        signal.signal(sig, workers.on_signal)
    quick_deaths = dict.fromkeys(range(count), 0)
    while workers.running:
        for index, process in workers.reap():
            code = process.exitcode
            if workers.stopping:
                if code:
                    workers.failures.append(f"{process.pid}: {code}")
                continue
            uptime = time.monotonic() - workers.started_at[index]
            served = workers.serving[index].is_set()
            quick_deaths[index] = 0 if served else quick_deaths[index] + 1
            pause = 0.0
            if quick_deaths[index]:
                pause = min(_FIRST_BACKOFF * 2 ** (quick_deaths[index] - 1), MAX_BACKOFF)
            logger.error(
                "proxy.worker_died",
                extra={
                    "worker": index,
                    "pid": process.pid,
                    "exit_code": code,
                    "uptime_s": round(uptime, 3),
                    "had_started": served,
                    "respawn_in_s": pause,
                },
            )
            # The others keep serving meanwhile; signals still reach the master.
            time.sleep(pause)
            if not workers.stopping:  # a SIGTERM may have come during the pause
                workers.start(index)
    if workers.failures:
        logger.error("proxy.worker_failed", extra={"exit_codes": workers.failures})
        return 1
    return 0
