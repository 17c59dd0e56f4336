"""The shared cache key of `GET /api/events/{id}` (club-api's `club:event:{id}`)."""

from __future__ import annotations

from typing import Final

__all__ = ["EVENT_CACHE_PREFIX", "event_cache_key"]

EVENT_CACHE_PREFIX: Final = "club:event:"


def event_cache_key(event_id: int) -> str:
    """Both sides read, write (Packager format) and drop this one key per event."""
    return f"{EVENT_CACHE_PREFIX}{event_id}"
