"""The access log: one JSON line per request, on the `proxy.access` logger.

Each line holds the request id, route id, target, method, path, status, body
bytes sent, duration and, when the answer was cut, why. Secrets are never
logged: no headers at all, and query values whose name looks like a secret
(token, password, key, signature...) are replaced by ``[redacted]``. Nothing is
formatted unless the logger is enabled for INFO.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import Any, Final

import orjson

__all__ = ["ACCESS_LOGGER", "AccessLog", "JsonFormatter", "configure_logging", "redact_query"]

ACCESS_LOGGER: Final = "proxy.access"
_SECRET_NAME: Final = re.compile(
    r"(?i)(token|secret|passw|pwd|key|auth|sig|session|sid|code|credential|jwt|bearer)"
)
_REDACTED: Final = "[redacted]"
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


class AccessLog:
    """Writes the access line of each request when `proxy.access` is enabled."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or logging.getLogger(ACCESS_LOGGER)

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
        """Emit one line; free when the logger is disabled."""
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
        return orjson.dumps(line, default=repr).decode()


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
