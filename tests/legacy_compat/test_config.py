"""legacy_compat config: the three TOML files, env overrides, sources, bad inputs."""

from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path

import pytest

from legacy_compat import ConfigError, Settings, load_settings

SAMPLE = Path(__file__).resolve().parent.parent / "fixtures" / "config" / "legacy"


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    """A writable copy of tests/fixtures/config/legacy."""
    return Path(shutil.copytree(SAMPLE, tmp_path / "config"))


def edit(root: Path, name: str, old: str, new: str) -> None:
    path = root / name
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {name}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def test_settings_fixture_reads_the_test_servers(
    settings: Settings, pg_dsn: str, redis_url: str
) -> None:
    assert settings.databases["club"].dsn == pg_dsn
    assert settings.redis_url == redis_url
    assert settings.max_transaction_time == 5.0
    assert settings.source_of("pg.club.dsn") == "pg.toml [club] dsn"


def test_sample_legacy_dir_is_typed() -> None:
    settings = load_settings(SAMPLE, environ={})
    club, analytics = settings.databases["club"], settings.databases["analytics"]
    assert settings.max_transaction_time == 5.0
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    # Reserved characters in the password are quoted in the built DSN.
    assert club.dsn == "postgresql://club:s3cr%3At%40x@127.0.0.1:5432/club"
    assert (club.min_size, club.max_size, club.command_timeout) == (2, 10, 30.0)
    assert club.statement_cache_size == 100
    assert dict(club.server_settings) == {
        "application_name": "club-api",
        "statement_timeout": "15s",
        "idle_in_transaction_session_timeout": "10000",  # derived: 5 s + max(5 s, 1 s)
    }
    assert analytics.dsn == "postgresql://reader@127.0.0.1:5432/analytics"
    assert (analytics.max_size, analytics.statement_cache_size) == (2, 0)
    assert "s3cr" not in repr(club)  # the DSN and its password stay out of reprs


def test_secrets_stay_out_of_the_settings_repr() -> None:
    env = {"CLUB_SETTINGS__REDIS_URL": "redis://:hunter2@127.0.0.1:6379/0"}
    settings = load_settings(SAMPLE, environ=env)
    assert settings.redis_url == "redis://:hunter2@127.0.0.1:6379/0"
    assert settings.legacy["SECRET_KEY"] == "not-a-real-secret"
    shown = repr(settings)
    for secret in ("hunter2", "not-a-real-secret", "s3cr"):
        assert secret not in shown


def test_unmodelled_legacy_keys_stay_accessible() -> None:
    settings = load_settings(SAMPLE, environ={})
    assert settings.legacy["SECRET_KEY"] == "not-a-real-secret"
    assert settings.legacy["CORS_ORIGINS"] == ["https://club.example"]
    assert settings.legacy["FEATURES"] == {"registrations": True}
    assert "MAX_TRANSACTION_TIME" not in settings.legacy
    assert settings.databases["club"].extra == {"pool_recycle": 600}
    assert (settings.info.name, settings.info.version) == ("club-api", "3.14.0")
    assert settings.info["maintainers"] == ["backend@club.example"]


def test_settings_are_frozen() -> None:
    settings = load_settings(SAMPLE, environ={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.redis_url = "redis://elsewhere"  # type: ignore[misc]
    with pytest.raises(TypeError):
        settings.databases["club"].server_settings["statement_timeout"] = "0"  # type: ignore[index]
    with pytest.raises(TypeError):
        settings.legacy["DEBUG"] = True  # type: ignore[index]


@pytest.mark.parametrize(
    ("path", "source"),
    [
        ("settings.MAX_TRANSACTION_TIME", "settings.toml MAX_TRANSACTION_TIME"),
        ("settings.redis_url", "settings.toml REDIS_URL"),  # any case
        ("settings.SECRET_KEY", "settings.toml SECRET_KEY"),  # legacy keys too
        ("pg.club.max_size", "pg.toml [club] max_size"),
        ("pg.club.statement_cache_size", "default"),
        ("pg.analytics.command_timeout", "default"),
        ("pg.analytics.dsn", "pg.toml [analytics] dsn"),
        (
            "pg.club.server_settings.statement_timeout",
            "pg.toml [club.server_settings] statement_timeout",
        ),
        (
            "pg.club.server_settings.idle_in_transaction_session_timeout",
            "derived from settings.toml MAX_TRANSACTION_TIME",
        ),
        ("info.version", "info.toml version"),
    ],
)
def test_source_of_every_value(path: str, source: str) -> None:
    assert load_settings(SAMPLE, environ={}).source_of(path) == source


def test_source_of_a_built_dsn_lists_its_parts() -> None:
    settings = load_settings(SAMPLE, environ={"CLUB_PG__CLUB__PORT": "6543"})
    assert settings.databases["club"].dsn.endswith("@127.0.0.1:6543/club")
    assert settings.source_of("pg.club.dsn") == (
        "built from pg.toml [club] host, env CLUB_PG__CLUB__PORT, pg.toml [club] user,"
        " pg.toml [club] password, pg.toml [club] database"
    )
    with pytest.raises(KeyError, match=re.escape("no config value 'pg.club.nope'")):
        settings.source_of("pg.club.nope")


@pytest.mark.parametrize(
    ("env", "path", "value"),
    [
        ({"CLUB_SETTINGS__MAX_TRANSACTION_TIME": "2.5"}, "settings.max_transaction_time", 2.5),
        ({"CLUB_SETTINGS__REDIS_URL": "redis://r:1/2"}, "settings.redis_url", "redis://r:1/2"),
        ({"CLUB_PG__CLUB__MAX_SIZE": "3"}, "pg.club.max_size", 3),
        ({"CLUB_PG__Analytics__MAX_SIZE": "4"}, "pg.analytics.max_size", 4),  # names fold case
        (
            {"CLUB_PG__CLUB__SERVER_SETTINGS__APPLICATION_NAME": "x"},
            "pg.club.server_settings.application_name",
            "x",
        ),
        (
            {"CLUB_PG__CLUB__SERVER_SETTINGS__IDLE_IN_TRANSACTION_SESSION_TIMEOUT": "1min"},
            "pg.club.server_settings.idle_in_transaction_session_timeout",
            "1min",
        ),  # an explicit backstop replaces the derived one
        ({"CLUB_SETTINGS__DEBUG": "true"}, "settings.debug", True),  # legacy bool stays a bool
        ({"CLUB_SETTINGS__PUSH_BATCH": "7"}, "settings.push_batch", 7),  # legacy int stays an int
        ({"CLUB_PG__CLUB__POOL_RECYCLE": "60"}, "pg.club.pool_recycle", 60),  # an extra
        ({"CLUB_INFO__VERSION": "9"}, "info.version", "9"),
        ({"CLUB_INFO__REGION": "eu"}, "info.region", "eu"),  # info is free-form
        (
            {"CLUB_PG__ANALYTICS__DSN": "postgresql://other/db"},
            "pg.analytics.dsn",
            "postgresql://other/db",
        ),
    ],
)
def test_env_overrides(env: dict[str, str], path: str, value: object) -> None:
    settings = load_settings(SAMPLE, environ=env)
    assert _value(settings, path) == value
    assert settings.source_of(path) == f"env {next(iter(env))}"


def _value(settings: Settings, path: str) -> object:
    section, _, rest = path.partition(".")
    if section == "info":
        return settings.info.values[rest]
    if section == "settings":
        modelled = {"max_transaction_time", "redis_url"}
        return getattr(settings, rest) if rest in modelled else settings.legacy[rest.upper()]
    db_name, _, key = rest.partition(".")
    db = settings.databases[db_name]
    if key.startswith("server_settings."):
        return db.server_settings[key.partition(".")[2]]
    return db.extra[key] if key in db.extra else getattr(db, key)


def test_env_dsn_replaces_file_parts_and_says_so() -> None:
    settings = load_settings(SAMPLE, environ={"CLUB_PG__CLUB__DSN": "postgresql://u@h:1/d"})
    assert settings.databases["club"].dsn == "postgresql://u@h:1/d"
    assert settings.source_of("pg.club.dsn") == "env CLUB_PG__CLUB__DSN"


def test_unrelated_environment_is_ignored() -> None:
    env = {"CLUB_PG_DSN": "x", "CLUB_TEST_PG_DSN": "x", "CLUB_SETTINGS": "x", "PATH": "/bin"}
    assert load_settings(SAMPLE, environ=env) == load_settings(SAMPLE, environ={})


def test_unix_socket_host() -> None:
    settings = load_settings(SAMPLE, environ={"CLUB_PG__CLUB__HOST": "/var/run/postgresql"})
    assert settings.databases["club"].dsn == (
        "postgresql://club:s3cr%3At%40x@/club?host=/var/run/postgresql&port=5432"
    )


# (file, old text, new text or None to delete the file, expected message)
FILE_ERRORS = [
    ("settings.toml", "MAX_TRANSACTION_TIME = 5", 'MAX_TRANSACTION_TIME = "five"',
     "settings.toml MAX_TRANSACTION_TIME: value 'five' is not a valid float"),
    ("settings.toml", "MAX_TRANSACTION_TIME = 5", "MAX_TRANSACTION_TIME = 0",
     "settings.toml MAX_TRANSACTION_TIME: value 0.0 must be > 0"),
    ("settings.toml", "MAX_TRANSACTION_TIME = 5", "MAX_TRANSACTION_TIME = true",
     "settings.toml MAX_TRANSACTION_TIME: value True is not a valid float"),
    ("settings.toml", "MAX_TRANSACTION_TIME = 5", "",
     "settings.toml: required key MAX_TRANSACTION_TIME is missing"),
    ("settings.toml", "MAX_TRANSACTION_TIME = 5", "MAX_TRANSACTION_TIME = 5\nMax_Transaction_Time = 5",
     "settings.toml Max_Transaction_Time: unknown key (did you mean MAX_TRANSACTION_TIME?)"),
    ("settings.toml", 'REDIS_URL = "redis://', 'REDIS_URL = "http://',
     "settings.toml REDIS_URL: value 'http://127.0.0.1:6379/0' is not a redis:// URL"),
    ("settings.toml", "DEBUG = false", "DEBUG = ",
     "settings.toml: invalid TOML"),
    ("pg.toml", "max_size = 10", "max_szie = 10",
     "pg.toml [club] max_szie: unknown key (did you mean max_size?)"),
    ("pg.toml", "max_size = 10", 'max_size = "ten"',
     "pg.toml [club] max_size: value 'ten' is not a valid int"),
    ("pg.toml", "max_size = 10", "max_size = 1.5",
     "pg.toml [club] max_size: value 1.5 is not a valid int"),
    ("pg.toml", "max_size = 10", "max_size = 0",
     "pg.toml [club] max_size: value 0 is out of range"),
    ("pg.toml", "max_size = 10", "max_size = 1",
     "pg.toml [club]: min_size 2 is above max_size 1"),
    ("pg.toml", 'dsn = "postgresql://reader', 'dsn = "mysql://reader:pw',
     "pg.toml [analytics] dsn: value 'mysql://reader:***@127.0.0.1:5432/analytics' is not a postgresql:// URL"),
    ("pg.toml", 'host = "127.0.0.1"', 'host = "127.0.0.1"\ndsn = "postgresql://x/y"',
     "pg.toml [club]: dsn (pg.toml [club] dsn) and pg.toml [club] host, pg.toml [club] port"),
    ("pg.toml", 'host = "127.0.0.1"\n', "",
     "pg.toml [club]: neither dsn nor host is set"),
    ("pg.toml", 'password = "s3cr:t@x"', "password = 12345",
     "pg.toml [club] password: value <redacted> is not a valid str"),
    ("pg.toml", 'statement_timeout = "15s"', "statement_timeout = {value = 1}",
     "pg.toml [club.server_settings] statement_timeout: value {'value': 1} is not a string"),
    ("pg.toml", "\n[club]\n", "\ntimeout = 5\n[club]\n",
     "pg.toml timeout: value 5 is not a table"),
    ("info.toml", 'name = "club-api"', None,
     "info.toml: config file is missing"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "old", "new", "message"), FILE_ERRORS)
def test_bad_files_name_file_key_and_value(
    sample: Path, name: str, old: str, new: str | None, message: str
) -> None:
    if new is None:
        (sample / name).unlink()
    else:
        edit(sample, name, old, new)
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        load_settings(sample, environ={})
    assert "s3cr" not in str(info.value)
    assert "12345" not in str(info.value)


def test_pg_toml_without_databases(sample: Path) -> None:
    (sample / "pg.toml").write_text("# nothing\n", encoding="utf-8")
    with pytest.raises(
        ConfigError, match=re.escape("pg.toml: no database table; add at least [club]")
    ):
        load_settings(sample, environ={})


# (environment, expected message): an override that would do nothing is an error.
ENV_ERRORS = [
    ({"CLUB_PG__BILLING__DSN": "postgresql://x/y"},
     "env CLUB_PG__BILLING__DSN: pg.toml has no database 'billing' (have: club, analytics)"),
    ({"CLUB_PG__CLUB__DNS": "postgresql://x/y"},
     "env CLUB_PG__CLUB__DNS: pg.toml [club] has no such key and it is not a modelled setting"),
    ({"CLUB_SETTINGS__REDIS_ULR": "redis://x"},
     "env CLUB_SETTINGS__REDIS_ULR: settings.toml has no such key"),
    ({"CLUB_PG__CLUB__MAX_SIZE": "ten"},
     "env CLUB_PG__CLUB__MAX_SIZE: value 'ten' is not a valid int"),
    ({"CLUB_SETTINGS__DEBUG": "maybe"},
     "env CLUB_SETTINGS__DEBUG: value 'maybe' is not a valid bool"),
    ({"CLUB_SETTINGS__FEATURES": "x"},
     "env CLUB_SETTINGS__FEATURES: cannot override the dict settings.toml FEATURES"),
    ({"CLUB_PG__ANALYTICS__HOST": "db2"},
     "pg.toml [analytics]: dsn (pg.toml [analytics] dsn) and env CLUB_PG__ANALYTICS__HOST both set"),
    ({"CLUB_PG__CLUB__DSN": "mysql://u:hunter2@h/d"},
     "env CLUB_PG__CLUB__DSN: value 'mysql://u:***@h/d' is not a postgresql:// URL"),
    ({"CLUB_SETTINGS__REDIS_URL": "http://u:hunter2@h:6379/0"},
     "env CLUB_SETTINGS__REDIS_URL: value 'http://u:***@h:6379/0' is not a redis:// URL"),
    ({"CLUB_SETTINGS__MAX_TRANSACTION_TIME": "nan"},
     "env CLUB_SETTINGS__MAX_TRANSACTION_TIME: value 'nan' is not a valid float"),
]  # fmt: skip


@pytest.mark.parametrize(("env", "message"), ENV_ERRORS)
def test_bad_overrides_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        load_settings(SAMPLE, environ=env)
    assert "hunter2" not in str(info.value)
