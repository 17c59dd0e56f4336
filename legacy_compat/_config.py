"""The legacy TOML config (`app/config/*.toml`) as typed, frozen settings.

A config dir holds `settings.toml` (flat UPPERCASE keys), `pg.toml` (one table
per database) and `info.toml` (service metadata). Keys we model are typed and
validated; other legacy keys are kept (`Settings.legacy`, `DatabaseSettings.extra`).
A key that looks like a misspelt modelled key is an error, never an extra.

Environment overrides are explicit, and every value remembers where it came from
(`Settings.source_of`), because the legacy trap was an edit that silently did nothing:

    CLUB_SETTINGS__<KEY>                      settings.toml KEY
    CLUB_PG__<DB>__<KEY>                      pg.toml [db] key
    CLUB_PG__<DB>__SERVER_SETTINGS__<GUC>     pg.toml [db.server_settings] guc
    CLUB_INFO__<KEY>                          info.toml key

An override must name a modelled key or a key the file already has; its text is
converted to the type of the value it replaces. docs/config-and-pgbank.md has the rules.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from legacy_compat._config_values import (
    DB_KEYS,
    SETTINGS_KEYS,
    Sourced,
    convert,
    database_fields,
    match_key,
    near_key,
    redact,
)
from legacy_compat.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["DatabaseSettings", "ServiceInfo", "Settings", "load_settings"]

FILES: Final = ("settings.toml", "pg.toml", "info.toml")


@dataclass(frozen=True, slots=True, kw_only=True)
class DatabaseSettings:
    """One `[name]` table of pg.toml.

    Attributes:
        name: the table name (`bank.<name>`).
        dsn: the connection URL (given, or built from host/port/user/password/database).
        min_size, max_size: the asyncpg pool bounds.
        command_timeout: per-query client timeout in seconds, None for none.
        statement_cache_size: asyncpg's prepared statement cache (0 behind pgbouncer).
        server_settings: startup GUCs, with the idle-in-transaction backstop filled in.
        extra: legacy keys of the table that are not modelled.
    """

    name: str
    dsn: str = field(repr=False)
    min_size: int = 1
    max_size: int = 10
    command_timeout: float | None = None
    statement_cache_size: int = 100
    server_settings: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    extra: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceInfo:
    """info.toml: `name` and `version` when present, and every key in `values`."""

    name: str = ""
    version: str = ""
    values: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def __getitem__(self, key: str) -> Any:
        return self.values[key]


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Everything the legacy config dir says, typed.

    Attributes:
        config_dir: where the files were read from.
        max_transaction_time: settings.toml `MAX_TRANSACTION_TIME`, seconds.
        redis_url: settings.toml `REDIS_URL`.
        databases: pg.toml, one entry per table.
        info: info.toml.
        legacy: settings.toml keys that are not modelled, as written.
        sources: where each value came from, by dotted path (see `source_of`).
    """

    config_dir: Path
    max_transaction_time: float
    # Out of the repr, like DatabaseSettings.dsn: a Redis URL may carry a password
    # and legacy keys hold secrets (SECRET_KEY), and reprs end up in logs.
    redis_url: str = field(repr=False)
    databases: Mapping[str, DatabaseSettings]
    info: ServiceInfo
    legacy: Mapping[str, Any] = field(repr=False)
    sources: Mapping[str, str] = field(repr=False)

    def source_of(self, path: str) -> str:
        """Where a value came from: `source_of("pg.club.dsn") == "pg.toml [club] dsn"`.

        Paths are `settings.<KEY>`, `pg.<db>.<key>`, `pg.<db>.server_settings.<guc>`
        and `info.<key>`, matched without regard to case.
        """
        found = self.sources.get(path.lower())
        if found is None:
            msg = f"no config value {path!r}; known: {', '.join(sorted(self.sources))}"
            raise KeyError(msg)
        return found


def load_settings(
    config_dir: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None
) -> Settings:
    """Read the three TOML files of `config_dir`, apply `CLUB_*` overrides, validate."""
    root = Path(config_dir)
    settings, pg, info = (_read_toml(root / name) for name in FILES)
    raw = _Raw(
        settings={k: (v, f"settings.toml {k}") for k, v in settings.items()},
        pg={db: _pg_table(db, table) for db, table in pg.items()},
        info={k: (v, f"info.toml {k}") for k, v in info.items()},
    )
    for name, text in (os.environ if environ is None else environ).items():
        raw.override(name, text)
    return raw.build(root)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        msg = f"{path}: config file is missing"
    except tomllib.TOMLDecodeError as exc:
        msg = f"{path}: invalid TOML: {exc}"
    raise ConfigError(msg)


def _pg_table(db: str, table: object) -> dict[str, Sourced]:
    if not isinstance(table, dict):
        msg = f"pg.toml {db}: value {table!r} is not a table; each database is a [name] table"
        raise ConfigError(msg)
    out = {k: (v, f"pg.toml [{db}] {k}") for k, v in table.items() if k != "server_settings"}
    gucs = table.get("server_settings", {})
    if not isinstance(gucs, dict):
        msg = f"pg.toml [{db}] server_settings: value {gucs!r} is not a table"
        raise ConfigError(msg)
    for guc, value in gucs.items():
        out[f"server_settings.{guc}"] = (value, f"pg.toml [{db}.server_settings] {guc}")
    return out


@dataclass(slots=True, kw_only=True)
class _Raw:
    """Raw values by key with their sources, before typing."""

    settings: dict[str, Sourced]
    pg: dict[str, dict[str, Sourced]]
    info: dict[str, Sourced]

    def override(self, name: str, text: str) -> None:
        """Apply one environment variable if it is a `CLUB_*__` override."""
        head, _, rest = name.partition("__")
        where = f"env {name}"
        if head == "CLUB_SETTINGS" and rest:
            key = match_key(rest, self.settings, SETTINGS_KEYS)
            self._put(
                self.settings, key, text, where=where, file="settings.toml", modelled=SETTINGS_KEYS
            )
        elif head == "CLUB_INFO" and rest:
            key = match_key(rest, self.info, frozenset()) or rest.lower()
            self._put(self.info, key, text, where=where, file="info.toml", modelled=frozenset())
        elif head == "CLUB_PG" and rest:
            db_name, _, key_name = rest.partition("__")
            db = match_key(db_name, self.pg, frozenset())
            if db is None or not key_name:
                msg = f"{where}: pg.toml has no database {db_name.lower()!r} (have: {', '.join(self.pg)})"
                raise ConfigError(msg)
            table = self.pg[db]
            if key_name.upper().startswith("SERVER_SETTINGS__"):
                guc = key_name.partition("__")[2]
                gucs = {
                    k.partition(".")[2]: v
                    for k, v in table.items()
                    if k.startswith("server_settings.")
                }
                key = "server_settings." + (match_key(guc, gucs, frozenset()) or guc.lower())
            else:
                key = match_key(key_name, table, DB_KEYS)
            self._put(table, key, text, where=where, file=f"pg.toml [{db}]", modelled=DB_KEYS)

    @staticmethod
    def _put(
        table: dict[str, Sourced],
        key: str | None,
        text: str,
        *,
        where: str,
        file: str,
        modelled: frozenset[str],
    ) -> None:
        """Store an override; modelled keys are typed later, others take the file's type."""
        if key is None:
            msg = f"{where}: {file} has no such key and it is not a modelled setting"
            raise ConfigError(msg)
        if key not in modelled and key in table and not isinstance(table[key][0], str):
            kind = type(table[key][0])
            if kind not in {bool, int, float}:
                msg = f"{where}: cannot override the {kind.__name__} {file} {key} from the environment"
                raise ConfigError(msg)
            table[key] = (convert(text, kind, where, key), where)
        else:
            table[key] = (text, where)

    def build(self, root: Path) -> Settings:
        sources = {f"info.{k}".lower(): s for k, (_, s) in self.info.items()}
        sources |= {f"settings.{k}".lower(): s for k, (_, s) in self.settings.items()}
        for key in self.settings:
            if (near := near_key(key, SETTINGS_KEYS)) is not None:
                msg = f"{self.settings[key][1]}: unknown key (did you mean {near}?)"
                raise ConfigError(msg)
        mtt = self._required(self.settings, "MAX_TRANSACTION_TIME", float, "settings.toml")
        if mtt <= 0:
            msg = f"{sources['settings.max_transaction_time']}: value {mtt!r} must be > 0"
            raise ConfigError(msg)
        redis_url = self._required(self.settings, "REDIS_URL", str, "settings.toml")
        if urlsplit(redis_url).scheme not in {"redis", "rediss", "unix"}:
            msg = f"{sources['settings.redis_url']}: value {redact(redis_url)!r} is not a redis:// URL"
            raise ConfigError(msg)
        if not self.pg:
            msg = "pg.toml: no database table; add at least [club]"
            raise ConfigError(msg)
        databases = {
            db: DatabaseSettings(**database_fields(db, table, mtt, sources))
            for db, table in self.pg.items()
        }
        info = {k: v for k, (v, _) in self.info.items()}
        return Settings(
            config_dir=root,
            max_transaction_time=mtt,
            redis_url=redis_url,
            databases=MappingProxyType(databases),
            info=ServiceInfo(
                name=str(info.get("name", "")),
                version=str(info.get("version", "")),
                values=MappingProxyType(info),
            ),
            legacy=MappingProxyType(
                {k: v for k, (v, _) in self.settings.items() if k not in SETTINGS_KEYS}
            ),
            sources=MappingProxyType({k.lower(): v for k, v in sources.items()}),
        )

    @staticmethod
    def _required(table: dict[str, Sourced], key: str, kind: type, file: str) -> Any:
        if key not in table:
            msg = f"{file}: required key {key} is missing"
            raise ConfigError(msg)
        value, source = table[key]
        return convert(value, kind, source, key)
