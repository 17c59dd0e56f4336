"""CPU instructions per request of a server process, counted by valgrind (callgrind).

Wall-clock and CPU-time figures on a shared 2-core machine swing by a third
between identical runs; an instruction count does not (the same total for
the same binary and inputs, whatever else the machine is doing). The server
runs under `valgrind --tool=callgrind` twice, once for `few` and once for
`many` keep-alive requests sent one after another; the difference divided
by `many - few` is the user-space cost of one request, start-up and shutdown
cancelled out. The kernel's share (the socket calls) is not counted.
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

__all__ = ["available", "instructions_per_request"]

_COLLECTED = re.compile(r"Collected : (\d+)")
_LENGTH = re.compile(rb"(?i)content-length: *(\d+)")
_CONNECTIONS = 4
_STARTUP = 180.0  # seconds; valgrind slows start-up about fifty times


def available() -> bool:
    """Whether valgrind is installed."""
    return shutil.which("valgrind") is not None


def instructions_per_request(
    command: Callable[[int], list[str]], path: str, tmp: Path, *, few: int = 500, many: int = 3000
) -> float:
    """Instructions per request to `path` of the server `command(port)` starts."""
    return (_run(command, path, tmp, many) - _run(command, path, tmp, few)) / (many - few)


def _run(command: Callable[[int], list[str]], path: str, tmp: Path, requests: int) -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    out = tmp / f"callgrind.{port}.out"
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *command(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_listening(port)
        _requests(port, path, requests)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=_STARTUP)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out.unlink(missing_ok=True)
    found = _COLLECTED.search(err.decode(errors="replace"))
    if found is None:
        msg = f"callgrind printed no total for {cmd}"
        raise RuntimeError(msg)
    return int(found[1])


def _wait_listening(port: int) -> None:
    deadline = time.monotonic() + _STARTUP
    while True:
        try:
            _requests(port, "/", 1, connections=1)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
        else:
            return


def _requests(port: int, path: str, count: int, *, connections: int = _CONNECTIONS) -> None:
    """`count` GETs of `path`, round-robin over keep-alive connections, each read to its end."""
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    socks = [socket.create_connection(("127.0.0.1", port), timeout=60) for _ in range(connections)]
    try:
        for index in range(count):
            sock = socks[index % connections]
            sock.sendall(request)
            _read_answer(sock)
    finally:
        for sock in socks:
            sock.close()


def _read_answer(sock: socket.socket) -> None:
    data = b""
    while (end := data.find(b"\r\n\r\n")) < 0:
        data += _recv(sock)
    length = _LENGTH.search(data, 0, end)
    want = end + 4 + (int(length[1]) if length else 0)
    while len(data) < want:
        data += _recv(sock)


def _recv(sock: socket.socket) -> bytes:
    chunk = sock.recv(1 << 20)
    if not chunk:
        msg = "the server closed the connection mid-answer"
        raise ConnectionError(msg)
    return chunk
