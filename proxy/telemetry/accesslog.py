"""The access log: one JSON line per request.

Each line holds the request id, route id, target, method, path, status, body
bytes sent, duration and, when the answer was cut, why. Secrets are never
logged: no headers at all, and query values whose name looks like a secret
(token, password, key, signature...) are replaced by ``[redacted]``.

`club-proxy run` writes the lines straight to stdout through a buffer flushed
every `flush_interval` seconds or `buffer_size` bytes (`AccessLog(stream=...)`):
stdlib logging cost about a tenth of a small proxied request (a LogRecord, a
getpid, a lock and a write per line). Used as a library, `AccessLog()` logs on
the `proxy.access` logger instead, formatting nothing unless it is enabled.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
import time
from typing import IO, Any, Final

import orjson

__all__ = [
    "ACCESS_LOGGER",
    "AccessLog",
    "JsonFormatter",
    "configure_logging",
    "redact_query",
    "stdout_access_log",
]

ACCESS_LOGGER: Final = "proxy.access"
_SECRET_NAME: Final = re.compile(
    r"(?i)(token|secret|passw|pwd|key|auth|sig|session|sid|code|credential|jwt|bearer)"
)
_REDACTED: Final = "[redacted]"
# The fields every access line has after its time, as JSON.
_FIXED: Final = b'"level":"info","logger":"%b","event":"proxy.access",' % ACCESS_LOGGER.encode()
_LINE: Final = (
    b'{"time":"%b",'
    + _FIXED
    + b'"request_id":"%b","route":"%b","target":"%b","method":"%b","path":%b,"query":%b,'
    + b'"status":%d,"bytes":%d,"duration_ms":%.3f%b}\n'
)
# LogRecord attributes that are not user data, so not copied into the JSON line.
_RECORD_FIELDS: Final = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
}


def redact_query(query: str) -> str:
    """The raw query string with values of secret-looking parameters replaced."""
    if not query:
        return query
    parts = []
    for part in query.split("&"):
        name, sep, _ = part.partition("=")
        parts.append(f"{name}={_REDACTED}" if sep and _SECRET_NAME.search(name) else part)
    return "&".join(parts)


class _Clock:
    """ISO-8601 UTC timestamps with milliseconds, as bytes.

    The seconds part is formatted once a second, the whole stamp once a
    millisecond: under load many lines share one.
    """

    __slots__ = ("_milli", "_prefix", "_second", "_stamp")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = b""
        self._milli = -1
        self._stamp = b""

    def stamp(self, now: float) -> bytes:
        product = now * 1000
        milli = int(product)
        if milli == product:
            # The product may have rounded up onto a millisecond that `now`
            # has not reached (1e9 + 0.999 is 1000000000.99899995...): count
            # it from the second, as `int((now - second) * 1000)` always did.
            second = int(now)
            milli = second * 1000 + int((now - second) * 1000)
        if milli == self._milli:
            return self._stamp
        second = milli // 1000
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)).encode()
        self._milli = milli
        self._stamp = stamp = b"%b.%03dZ" % (self._prefix, milli % 1000)
        return stamp


class AccessLog:
    """Writes the access line of each request.

    With `stream`, lines go to it directly (buffered, see the module doc);
    `close()` flushes what is left. Without, they go to the `proxy.access`
    logger (or `logger`) when it is enabled for INFO. `AccessLog.off()` writes
    nothing.
    """

    def __init__(
        self,
        logger: logging.Logger | None = None,
        *,
        stream: IO[bytes] | None = None,
        flush_interval: float = 0.1,
        buffer_size: int = 64 * 1024,
        enabled: bool = True,
    ) -> None:
        self.logger = logger or logging.getLogger(ACCESS_LOGGER)
        self.stream = stream
        self.enabled = enabled
        self.flush_interval = flush_interval
        self.buffer_size = buffer_size
        # Lines that could not be written (stdout closed, broken pipe).
        self.write_errors = 0
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._flush_handle: asyncio.TimerHandle | None = None
        self._clock = _Clock()

    @classmethod
    def off(cls) -> AccessLog:
        """An access log that writes nothing (`club-proxy run --no-access-log`)."""
        return cls(enabled=False)

    def log(
        self,
        *,
        request_id: str,
        route: str,
        target: str,
        method: str,
        raw_target: str,
        status: int,
        body_bytes: int,
        seconds: float,
        aborted: str | None = None,
    ) -> None:
        """Emit one line; free when disabled.

        Long because it runs once per request: the entry is built inline.
        """
        if not self.enabled:
            return
        if self.stream is not None:
            # Formatted directly: only the client's path and query need JSON
            # escaping (orjson does it); every other text field is a token the
            # proxy checked before it got here (a request id, a route or
            # upstream name, an HTTP method token, a fixed reason), and a dict
            # for orjson cost more than the line itself.
            path, _, query = raw_target.partition("?")
            try:
                path_json = orjson.dumps(path)
                query_json = orjson.dumps(redact_query(query)) if query else b'""'
            except TypeError:  # a lone surrogate, as in JsonFormatter.format
                path_json = json.dumps(path).encode()
                query_json = json.dumps(redact_query(query)).encode()
            line = _LINE % (
                self._clock.stamp(time.time()),
                request_id.encode(),
                route.encode(),
                target.encode(),
                method.encode(),
                path_json,
                query_json,
                status,
                body_bytes,
                seconds * 1000,
                b',"aborted":"%b"' % aborted.encode() if aborted is not None else b"",
            )
            # Buffered (inline: this runs once per request); flushed when full or soon.
            self._buffer.append(line)
            self._buffered += len(line)
            if self._buffered >= self.buffer_size or self._flush_handle is None:
                self._schedule_flush()
            return
        if not self.logger.isEnabledFor(logging.INFO):
            return
        path, _, query = raw_target.partition("?")
        entry: dict[str, Any] = {
            "request_id": request_id,
            "route": route,
            "target": target,
            "method": method,
            "path": path,
            "query": redact_query(query),
            "status": status,
            "bytes": body_bytes,
            "duration_ms": round(seconds * 1000, 3),
        }
        if aborted is not None:
            entry["aborted"] = aborted
        self.logger.info("proxy.access", extra={"access": entry})

    def _schedule_flush(self) -> None:
        """Flush now when the buffer is full (or no loop runs), else in `flush_interval`."""
        if self._buffered >= self.buffer_size:
            self.flush()
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
        else:
            self._flush_handle = loop.call_later(self.flush_interval, self.flush)

    def flush(self) -> None:
        """Write the buffered lines now."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if not self._buffer or self.stream is None:
            return
        data = b"".join(self._buffer)
        self._buffer.clear()
        self._buffered = 0
        try:
            self.stream.write(data)
            self.stream.flush()
        except (OSError, ValueError):
            # A closed or broken stdout must not take requests down with it;
            # the count shows the loss.
            self.write_errors += data.count(b"\n")

    def close(self) -> None:
        """Flush what is buffered (at shutdown)."""
        self.flush()


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, event, then the record's extra data."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        line.update((k, v) for k, v in vars(record).items() if k not in _RECORD_FIELDS)
        if (access := line.pop("access", None)) is not None:
            line.update(access)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        try:
            return orjson.dumps(line, default=repr).decode()
        except TypeError:
            # A str orjson refuses (a lone surrogate from bytes decoded with
            # surrogateescape): the stdlib escapes it instead of failing.
            return json.dumps(line, default=repr)


def configure_logging(level: str = "INFO", *, access_log: bool = True) -> None:
    """JSON lines: the access log on stdout, everything else on stderr.

    Called by `club-proxy run` (and by each worker process it starts); the
    library modules only ever create loggers.
    """
    formatter = JsonFormatter()
    errors = logging.StreamHandler(sys.stderr)
    errors.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [errors]
    root.setLevel(level.upper())
    access = logging.getLogger(ACCESS_LOGGER)
    access.propagate = False
    lines = logging.StreamHandler(sys.stdout)
    lines.setFormatter(formatter)
    access.handlers[:] = [lines]
    access.setLevel(logging.INFO if access_log else logging.CRITICAL + 1)
    # Nothing in our JSON lines uses them, and each costs a syscall or a lookup per record.
    logging.logProcesses = logging.logThreads = logging.logMultiprocessing = False


def stdout_access_log(*, enabled: bool = True) -> AccessLog:
    """The access log of `club-proxy run`: buffered JSON lines on stdout (or none)."""
    return AccessLog(stream=sys.stdout.buffer) if enabled else AccessLog.off()
