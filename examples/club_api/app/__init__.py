"""The reference club-api, written the legacy way (see examples/club_api/README.md)."""

from __future__ import annotations

from pathlib import Path

from examples.club_api.app.core.api import API, ClubApi, create_app

__all__ = ["API", "CONFIG_DIR", "ClubApi", "create_app"]

# The bundled legacy config (settings.toml, pg.toml, info.toml).
CONFIG_DIR = Path(__file__).resolve().parent / "config"
