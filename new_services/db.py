"""Tortoise configuration for the legacy database, built from the legacy `Settings`.

Tortoise gets its own asyncpg pool: PgBank's codecs must never reach it
(compat-findings §3.2: JSONField would write JSON strings). Connection
parameters come from pg.toml through `Settings`, so both sides read one config.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:
    from legacy_compat import Settings

__all__ = ["APP_LABEL", "MODEL_MODULES", "tortoise_config"]

APP_LABEL: Final = "club"
MODEL_MODULES: Final = (
    "new_services.users.models",
    "new_services.events.models",
    "new_services.registrations.models",
)
_DEFAULT_PORT: Final = 5432


def _credentials(dsn: str) -> dict[str, Any]:
    parts = urlsplit(dsn)
    return {
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or _DEFAULT_PORT,
        "user": unquote(parts.username or ""),
        "password": unquote(parts.password or ""),
        "database": unquote(parts.path.lstrip("/")),
    }


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
