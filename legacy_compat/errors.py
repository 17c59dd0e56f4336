"""Errors raised by legacy_compat.

The whole tree, grouped by what a caller can do about it::

    CompatError                  root: anything legacy_compat raises on purpose
    ├── ConfigError              a config file, key or environment override is invalid; fix the config
    ├── DatabaseError            PostgreSQL or the driver failed; keeps .sqlstate and the cause
    │   └── TransactionTimeout   a transaction ran past MAX_TRANSACTION_TIME and was rolled back
    ├── PackagerError            a cache value is not in the legacy Packager format (Cache treats it as a miss)
    ├── QueueError               PgQueue misuse or failure
    │   └── NotifyPayloadTooLarge  a NOTIFY payload at or over PostgreSQL's 8000-byte limit
    └── HubError                 WebSocket hub misuse or failure
"""

from __future__ import annotations

__all__ = [
    "CompatError",
    "ConfigError",
    "DatabaseError",
    "HubError",
    "NotifyPayloadTooLarge",
    "PackagerError",
    "QueueError",
    "TransactionTimeout",
]


class CompatError(Exception):
    """legacy_compat failed."""


class ConfigError(CompatError):
    """The legacy configuration is invalid."""


class DatabaseError(CompatError):
    """A database operation failed.

    `sqlstate` is PostgreSQL's five-character error code when the server
    reported one (None for client-side failures); `constraint_name` names the
    violated constraint where there is one. The driver error is the `__cause__`.
    """

    def __init__(
        self, message: str, *, sqlstate: str | None = None, constraint_name: str | None = None
    ) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.constraint_name = constraint_name


class TransactionTimeout(DatabaseError):
    """The transaction ran longer than MAX_TRANSACTION_TIME and was rolled back."""


class PackagerError(CompatError):
    """The value is not a valid legacy Packager string."""


class QueueError(CompatError):
    """The event queue failed."""


class NotifyPayloadTooLarge(QueueError):
    """The NOTIFY payload is at or over PostgreSQL's 8000-byte limit."""


class HubError(CompatError):
    """The WebSocket hub failed."""
