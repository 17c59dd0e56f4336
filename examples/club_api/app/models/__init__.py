"""club-api domain logic that is not a request handler (legacy `app/models/`)."""
