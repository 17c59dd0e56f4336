"""Typing and checking raw config values (the half of `_config` that knows the rules).

Raw values arrive as `(value, source)` pairs, where the source names the file and
key or the environment variable; every error message starts with that source.
"""

from __future__ import annotations

import difflib
import math
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote, urlsplit

from legacy_compat.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "CONNECTION_PARTS",
    "DB_KEYS",
    "SETTINGS_KEYS",
    "Sourced",
    "convert",
    "database_fields",
    "match_key",
    "near_key",
    "redact",
]

CONNECTION_PARTS: Final = ("host", "port", "user", "password", "database")
_DB_TYPES: Final[Mapping[str, type]] = {
    "dsn": str,
    "host": str,
    "port": int,
    "user": str,
    "password": str,
    "database": str,
    "min_size": int,
    "max_size": int,
    "command_timeout": float,
    "statement_cache_size": int,
}
DB_KEYS: Final = frozenset(_DB_TYPES)
_DB_DEFAULTS: Final = ("min_size", "max_size", "command_timeout", "statement_cache_size")
SETTINGS_KEYS: Final = frozenset({"MAX_TRANSACTION_TIME", "REDIS_URL"})
IDLE_GUC: Final = "idle_in_transaction_session_timeout"

# One raw value and where it came from, e.g. (5, "settings.toml MAX_TRANSACTION_TIME").
Sourced = tuple[Any, str]


def near_key(key: str, modelled: frozenset[str]) -> str | None:
    """The modelled key `key` is probably a misspelling of, if any."""
    if key in modelled:
        return None
    folded = {m.lower(): m for m in modelled}
    if key.lower() in folded:
        return folded[key.lower()]
    close = difflib.get_close_matches(key, list(modelled), n=1, cutoff=0.8)
    return close[0] if close else None


def match_key(name: str, existing: Mapping[str, object], modelled: frozenset[str]) -> str | None:
    """The real spelling of an env-given key: a modelled key or one the file has."""
    for key in (*modelled, *existing):
        if key.lower() == name.lower():
            return key
    return None


def convert(value: Any, kind: type, source: str, key: str) -> Any:
    """`value` as `kind` (env text is parsed); ConfigError names the source and value."""
    result = _coerce(value, kind)
    if result is None:
        shown = "<redacted>" if key == "password" else repr(redact(value))
        msg = f"{source}: value {shown} is not a valid {kind.__name__}"
        raise ConfigError(msg)
    return result


_BOOL_TEXT: Final = {"true": True, "yes": True, "on": True, "1": True}
_BOOL_TEXT.update(dict.fromkeys(("false", "no", "off", "0"), False))


def _coerce(value: Any, kind: type) -> Any:
    """`value` as `kind`, or None when it is not one (bool is never a number)."""
    if kind is str:
        return value if isinstance(value, str) else None
    if isinstance(value, str):
        text = value.strip().lower()
        if kind is bool:
            return _BOOL_TEXT.get(text)
        try:
            value = kind(text)
        except ValueError:
            return None
    if kind is bool or isinstance(value, bool):
        return value if kind is bool and isinstance(value, bool) else None
    if kind is int:
        return value if isinstance(value, int) else None
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def redact(value: Any) -> Any:
    """A DSN with its password replaced, for messages and logs."""
    if isinstance(value, str) and "://" in value:
        parts = urlsplit(value)
        if parts.password:
            return value.replace(f":{parts.password}@", ":***@", 1)
    return value


def database_fields(
    db: str, table: dict[str, Sourced], mtt: float, sources: dict[str, str]
) -> dict[str, Any]:
    """`DatabaseSettings` fields from one pg.toml table; records their sources in `sources`."""
    typed: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    gucs: dict[str, str] = {}
    for key, (value, source) in table.items():
        sources[f"pg.{db}.{key}".lower()] = source
        if key.startswith("server_settings."):
            gucs[key.partition(".")[2]] = _guc_text(value, source)
        elif key in DB_KEYS:
            typed[key] = convert(value, _DB_TYPES[key], source, key)
        elif (near := near_key(key, DB_KEYS)) is not None:
            msg = f"{source}: unknown key (did you mean {near}?)"
            raise ConfigError(msg)
        else:
            extra[key] = value
    _check_numbers(db, typed, sources)
    if not any(k.lower() == IDLE_GUC for k in gucs):
        # Backstop for a client that cannot run its own guard (blocked loop, lost
        # network): later than MAX_TRANSACTION_TIME so the guard normally wins.
        gucs[IDLE_GUC] = str(math.ceil((mtt + max(mtt, 1.0)) * 1000))
        sources[f"pg.{db}.server_settings.{IDLE_GUC}"] = (
            "derived from settings.toml MAX_TRANSACTION_TIME"
        )
    for key in _DB_DEFAULTS:
        sources.setdefault(f"pg.{db}.{key}", "default")
    typed["dsn"] = _dsn(db, table, typed, sources)
    for part in CONNECTION_PARTS:
        typed.pop(part, None)
    return typed | {
        "name": db,
        "server_settings": MappingProxyType(gucs),
        "extra": MappingProxyType(extra),
    }


def _guc_text(value: Any, source: str) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, str | int | float):
        return str(value)
    msg = f"{source}: value {value!r} is not a string, number or boolean"
    raise ConfigError(msg)


def _check_numbers(db: str, typed: dict[str, Any], sources: dict[str, str]) -> None:
    for key in ("min_size", "statement_cache_size", "port", "max_size", "command_timeout"):
        floor = 1 if key in {"max_size", "port"} else 0
        if key in typed and (typed[key] < floor or (key == "command_timeout" and typed[key] <= 0)):
            msg = f"{sources[f'pg.{db}.{key}']}: value {typed[key]!r} is out of range"
            raise ConfigError(msg)
    if typed.get("min_size", 1) > typed.get("max_size", 10):
        msg = f"pg.toml [{db}]: min_size {typed.get('min_size', 1)} is above max_size {typed.get('max_size', 10)}"
        raise ConfigError(msg)


def _dsn(db: str, table: dict[str, Sourced], typed: dict[str, Any], sources: dict[str, str]) -> str:
    """The DSN, given or built; a part that the DSN would silently ignore is an error."""
    parts = [p for p in CONNECTION_PARTS if p in typed]
    if "dsn" in typed:
        from_env = table["dsn"][1].startswith("env ")
        shadowed = [p for p in parts if not from_env or table[p][1].startswith("env ")]
        if shadowed:
            msg = f"pg.toml [{db}]: dsn ({table['dsn'][1]}) and {', '.join(table[p][1] for p in shadowed)} both set the connection; keep one"
            raise ConfigError(msg)
        dsn: str = typed["dsn"]
        if urlsplit(dsn).scheme not in {"postgres", "postgresql"}:
            msg = f"{table['dsn'][1]}: value {redact(dsn)!r} is not a postgresql:// URL"
            raise ConfigError(msg)
        return dsn
    for needed in ("host", "database"):
        if needed not in typed:
            msg = f"pg.toml [{db}]: neither dsn nor {needed} is set"
            raise ConfigError(msg)
    user = quote(typed.get("user", ""), safe="")
    auth = (
        f"{user}:{quote(typed['password'], safe='')}@"
        if "password" in typed
        else f"{user}@"
        if user
        else ""
    )
    host, port, database = typed["host"], typed.get("port", 5432), quote(typed["database"], safe="")
    # A host starting with "/" is a Unix socket directory, which libpq URLs put in the query.
    url = (
        f"postgresql://{auth}/{database}?host={quote(host)}&port={port}"
        if host.startswith("/")
        else f"postgresql://{auth}{host}:{port}/{database}"
    )
    sources[f"pg.{db}.dsn"] = "built from " + ", ".join(table[p][1] for p in parts)
    return url
