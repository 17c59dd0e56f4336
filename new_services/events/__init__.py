"""Events: `GET /api/events`, `GET /api/events/{id}` (with the shared Packager cache)."""
