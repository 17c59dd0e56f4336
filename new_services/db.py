"""Tortoise configuration for the legacy database, built from the legacy `Settings`.

Tortoise gets its own asyncpg pool: PgBank's codecs must never reach it
(compat-findings §3.2: JSONField would write JSON strings). Connection
parameters come from pg.toml through `Settings`, so both sides read one config.

The pool releases connections without asyncpg's default reset query
(`SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`): Tortoise
takes a connection per query, so that query was a second round trip for every
ORM call (docs/new_services.md, Performance). It undoes session state that
new_services never creates on this pool: no SET, LISTEN (PgQueue has its own
connection), advisory locks or WITH HOLD cursors. An open transaction is still
rolled back on release, by asyncpg itself. Code that needs session state must
use `SET LOCAL` inside a transaction, or its own connection.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qsl, unquote, urlsplit

if TYPE_CHECKING:
    import asyncpg

    from legacy_compat import Settings

__all__ = ["APP_LABEL", "MODEL_MODULES", "keep_session", "tortoise_config"]

APP_LABEL: Final = "club"
MODEL_MODULES: Final = (
    "new_services.users.models",
    "new_services.events.models",
    "new_services.registrations.models",
)
_DEFAULT_PORT: Final = 5432


async def keep_session(connection: asyncpg.Connection[Any]) -> None:
    """The pool's `reset=` hook: nothing beyond asyncpg's own rollback (see the module doc)."""


def _credentials(dsn: str) -> dict[str, Any]:
    """Tortoise credentials from a libpq URL (query `host=` may name a socket directory)."""
    parts = urlsplit(dsn)
    query = dict(parse_qsl(parts.query))
    credentials: dict[str, Any] = {
        "host": query.pop("host", None) or parts.hostname or "127.0.0.1",
        "port": int(query.pop("port", None) or parts.port or _DEFAULT_PORT),
        "user": query.pop("user", None) or unquote(parts.username or ""),
        "password": query.pop("password", None) or unquote(parts.password or ""),
        "database": query.pop("dbname", None) or unquote(parts.path.lstrip("/")),
    }
    if "sslmode" in query:
        credentials["ssl"] = query.pop("sslmode")  # asyncpg takes libpq's mode names
    if query:
        msg = f"pg dsn: unsupported query parameters {sorted(query)}"
        raise ValueError(msg)
    return credentials


def tortoise_config(settings: Settings, *, database: str = "club") -> dict[str, Any]:
    """The `Tortoise.init(config=...)` dict for pg.toml's `[database]` table."""
    db = settings.databases[database]
    server_settings = {**db.server_settings, "application_name": "club-new-services"}
    credentials = {
        **_credentials(db.dsn),
        "minsize": db.min_size,
        "maxsize": db.max_size,
        # Unknown keys pass through to asyncpg.create_pool (compat-findings §3.3).
        "statement_cache_size": db.statement_cache_size,
        "server_settings": server_settings,
        "reset": keep_session,
    }
    return {
        "connections": {
            "default": {"engine": "tortoise.backends.asyncpg", "credentials": credentials}
        },
        "apps": {APP_LABEL: {"models": list(MODEL_MODULES), "default_connection": "default"}},
        # Our datetime fields ignore these; they only pin Tortoise's process-global state.
        "use_tz": True,
        "timezone": "UTC",
    }
