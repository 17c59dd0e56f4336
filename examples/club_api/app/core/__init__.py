"""club-api core: the application context, errors and request parsing (legacy `app/core/`)."""
