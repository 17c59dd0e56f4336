"""legacy_compat config: the three TOML files, env overrides, sources, bad inputs."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from legacy_compat import Settings


def test_settings_fixture_reads_the_test_servers(
    settings: Settings, pg_dsn: str, redis_url: str
) -> None:
    assert settings.databases["club"].dsn == pg_dsn
    assert settings.redis_url == redis_url
    assert settings.max_transaction_time == 5.0
    assert settings.source_of("pg.club.dsn") == "pg.toml [club] dsn"
