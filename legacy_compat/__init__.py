"""legacy_compat: what the legacy club-api and the new services share.

TOML config, PgBank (raw SQL on asyncpg with the legacy codecs), the Packager
cache format, PgQueue (LISTEN/NOTIFY and the durable outbox), the
cross-instance WebSocket hub, and `StatsCollector` (their counters for
Prometheus). Everything public is listed in `__all__`.
"""

from __future__ import annotations

from legacy_compat._cache import Cache, CacheStats
from legacy_compat._codecs import TIMESTAMP_INFINITY, TIMESTAMP_NEG_INFINITY
from legacy_compat._config import DatabaseSettings, ServiceInfo, Settings, load_settings
from legacy_compat._db import Database, PgBank, Transaction
from legacy_compat._events import DebounceMode, Event, QueueStats
from legacy_compat._hub import HubStats, WebSocketHub
from legacy_compat._listener import Backoff
from legacy_compat._metrics import StatsCollector
from legacy_compat._outbox import emit
from legacy_compat._packager import Packager
from legacy_compat._queue import PgQueue
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
    "TIMESTAMP_INFINITY",
    "TIMESTAMP_NEG_INFINITY",
    "Backoff",
    "Cache",
    "CacheStats",
    "CompatError",
    "ConfigError",
    "Database",
    "DatabaseError",
    "DatabaseSettings",
    "DebounceMode",
    "Event",
    "HubError",
    "HubStats",
    "NotifyPayloadTooLarge",
    "Packager",
    "PackagerError",
    "PgBank",
    "PgQueue",
    "QueueError",
    "QueueStats",
    "ServiceInfo",
    "Settings",
    "StatsCollector",
    "Transaction",
    "TransactionTimeout",
    "WebSocketHub",
    "emit",
    "load_settings",
]
