"""legacy_compat: what the legacy club-api and the new services share.

TOML config, PgBank (raw SQL on asyncpg with the legacy codecs), the Packager
cache format, PgQueue (LISTEN/NOTIFY and the durable outbox) and the
cross-instance WebSocket hub. Everything public is listed in `__all__`.
"""

from __future__ import annotations

from legacy_compat._cache import Cache, CacheStats
from legacy_compat._config import DatabaseSettings, ServiceInfo, Settings, load_settings
from legacy_compat._packager import Packager
from legacy_compat.errors import (
    CompatError,
    ConfigError,
    DatabaseError,
    HubError,
    NotifyPayloadTooLarge,
    PackagerError,
    QueueError,
    TransactionTimeout,
)

__all__ = [
    "Cache",
    "CacheStats",
    "CompatError",
    "ConfigError",
    "DatabaseError",
    "DatabaseSettings",
    "HubError",
    "NotifyPayloadTooLarge",
    "Packager",
    "PackagerError",
    "QueueError",
    "ServiceInfo",
    "Settings",
    "TransactionTimeout",
    "load_settings",
]
