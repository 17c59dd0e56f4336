"""A small HTTP/1.1 upstream for bench_shadow: the primary and the candidates.

`python -m bench._sides PORT MODE` serves every GET on 127.0.0.1:PORT with one
fixed ~2 KiB JSON body (a club's events list), keep-alive, until SIGTERM:

- `same`: 200 and the JSON (the primary, and a candidate that agrees);
- `sleep`: the same answer, 5 s late (a hung candidate);
- `fail`: no answer, the connection reset (RST) as soon as a request arrives;
- `500`: 500 with a short JSON error body (a candidate that answers, and differs).

A raw asyncio protocol on uvloop, so the sides cost the shared cores little.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import struct
import sys
from typing import Final, cast

import uvloop

__all__ = ["BODY", "MODES"]

MODES: Final = ("same", "sleep", "fail", "500")
SLEEP: Final = 5.0
TAGS: Final = ("outdoor", "family", "members", "paid", "juniors", "seniors", "weekend")


def _body() -> bytes:
    events = [
        {
            "id": 4100 + i,
            "title": f"Session {i}",
            "starts_at": f"2026-12-{i + 1:02d}T09:30:00Z",
            "venue": {"id": 7, "name": "North pitch"},
            "tags": [TAGS[(i + k) % len(TAGS)] for k in range(3)],
            "capacity": 24,
            "booked": (i * 7) % 24,
            "cancelled": False,
            "updated_at": f"2026-11-20T10:{i:02d}:00Z",
        }
        for i in range(10)
    ]
    document = {"club_id": 7, "events": events, "page": {"next": None, "size": 10}}
    return json.dumps(document, separators=(",", ":")).encode()


BODY: Final = _body()


def _response(status: str, body: bytes) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "\r\n"
    )
    return head.encode() + body


OK: Final = _response("200 OK", BODY)
ERROR: Final = _response("500 Internal Server Error", b'{"error":"internal"}')


class Side(asyncio.Protocol):
    """Answers each request head (GETs: no bodies) as its mode says."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:  # noqa: ARG002
        self.transport = None

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data
        heads = buffer.count(b"\r\n\r\n")
        self.buffer = buffer[buffer.rfind(b"\r\n\r\n") + 4 :] if heads else buffer
        transport = self.transport
        if not heads or transport is None:
            return
        if self.mode == "same":
            transport.write(OK * heads)
        elif self.mode == "500":
            transport.write(ERROR * heads)
        elif self.mode == "sleep":
            asyncio.get_running_loop().call_later(SLEEP, self._late, heads)
        else:  # fail: reset the connection
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()

    def _late(self, heads: int) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(OK * heads)


async def serve(port: int, mode: str) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: Side(mode), "127.0.0.1", port, backlog=4096, reuse_address=True
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str]) -> int:
    port, mode = int(argv[0]), argv[1]
    if mode not in MODES:
        msg = f"mode must be one of {', '.join(MODES)}, not {mode!r}"
        raise SystemExit(msg)
    uvloop.run(serve(port, mode))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
